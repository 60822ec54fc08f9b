"""A child process for the lock tests (run with sys.executable, never imported).

Modes:
  count URL KINDS THREADS ITERATIONS NAME COUNTER GO
      KINDS is a comma list of rlock | simple | none, run as phases. For each
      KIND: prints "ready KIND", waits for one token on the Redis list GO:KIND,
      then THREADS threads each do ITERATIONS read-modify-write increments (GET
      then SET) of COUNTER:KIND under the lock NAME, and prints "done KIND".
  hold URL NAMES LEASE_MS
      Acquires each RLock of the comma list NAMES (watchdog on), prints "held",
      then sleeps until killed.
  release URL NAME
      Tries to release RLock NAME; prints "not-owned" or "released".
  acquire URL KIND NAMES TIMEOUT [GO]
      KIND is rlock | simple, NAMES a comma list. Prints "waiting" (then, with
      GO, waits for one token on the Redis list GO), then takes each lock in
      turn (blocking, TIMEOUT s in all) and prints "acquired T" (T =
      time.time() once it holds them all) or "timeout NAME".
"""

from __future__ import annotations

import sys
import threading
import time

from cache.connection import connect
from cache.locks import LockNotOwnedError, RLock, SimpleLock


def _take_token(client, key: str, limit: float) -> None:
    """BLPOP in short slices: redis-py 8's default socket timeout is 5 s."""
    deadline = time.monotonic() + limit
    while client.blpop([key], timeout=1) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"no start token on {key} in {limit}s")


def _increment(client, counter: str) -> None:
    value = client.get(counter)
    client.set(counter, int(value or 0) + 1)


def _phase(client, kind: str, threads: int, iterations: int, name: str, counter: str) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if kind == "rlock":
                lock = RLock(client, name)
                for _ in range(iterations):
                    with lock:
                        _increment(client, counter)
            elif kind == "simple":
                simple = SimpleLock(client, name, ttl_ms=10_000)
                for _ in range(iterations):
                    simple.acquire(blocking=True)
                    try:
                        _increment(client, counter)
                    finally:
                        simple.release()
            else:  # "none": the control run, expected to lose updates
                for _ in range(iterations):
                    _increment(client, counter)
        except BaseException as exc:  # reported to the parent through the exit code
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        print(f"error {errors[0]!r}", flush=True)
        sys.exit(1)


def count(url: str, kinds: str, threads: int, iterations: int, name: str, counter: str, go: str):
    client = connect(url)
    for kind in kinds.split(","):
        print(f"ready {kind}", flush=True)
        _take_token(client, f"{go}:{kind}", limit=300)
        _phase(client, kind, threads, iterations, name, f"{counter}:{kind}")
        print(f"done {kind}", flush=True)


def hold(url: str, names: str, lease_ms: int) -> None:
    client = connect(url)
    for name in names.split(","):
        RLock(client, name, lease_ms=lease_ms).acquire()
    print("held", flush=True)
    while True:
        time.sleep(1)


def release(url: str, name: str) -> None:
    client = connect(url)
    try:
        RLock(client, name).release()
    except LockNotOwnedError:
        print("not-owned", flush=True)
        return
    print("released", flush=True)


def acquire(url: str, kind: str, names: str, timeout: float, go: str | None) -> None:
    client = connect(url)
    print("waiting", flush=True)
    if go:
        _take_token(client, go, limit=300)
    deadline = time.monotonic() + timeout
    for name in names.split(","):
        lock = RLock(client, name) if kind == "rlock" else SimpleLock(client, name)
        remaining = max(0.0, deadline - time.monotonic())
        got = (
            lock.acquire(wait_timeout=remaining)
            if kind == "rlock"
            else lock.acquire(blocking=True, timeout=remaining)
        )
        if not got:
            print(f"timeout {name}", flush=True)
            return
    print(f"acquired {time.time()}", flush=True)


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "count":
        kind, threads, iterations, name, counter, go = rest
        count(url, kind, int(threads), int(iterations), name, counter, go)
    elif mode == "hold":
        name, lease_ms = rest
        hold(url, name, int(lease_ms))
    elif mode == "release":
        (name,) = rest
        release(url, name)
    elif mode == "acquire":
        kind, names, timeout, *go = rest
        acquire(url, kind, names, float(timeout), go[0] if go else None)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
