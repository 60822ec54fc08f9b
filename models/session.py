"""Engines and sessions: one engine per process, sessions per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 40) -> Engine:
    """An engine tuned for the backend behind ``url``.

    SQLite (the embedded default) is shared by the web, worker and beat
    processes, so it runs in WAL mode with a generous busy timeout; MySQL gets a
    bounded pool with pre-ping, so a restarted server costs one retry, not a 500.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=3600,
        pool_timeout=10,
    )


class Database:
    """The engine and session factory of one process."""

    def __init__(self, url: str, pool_size: int = 10, max_overflow: int = 40):
        self.url = url
        self.engine = make_engine(url, pool_size, max_overflow)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
