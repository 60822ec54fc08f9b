#!/usr/bin/env python3
"""The two README commands, runnable on a machine that has only Python 3.11+.

    python3 manage.py up       # install, migrate, load demo data, run web+worker+beat+Flower
    python3 manage.py cluster  # the same behind nginx: 3 web instances (deploy/cluster.py)
    python3 manage.py test     # install (with test tools) and run the whole suite
    python3 manage.py test --fast  # the fast tier: no test that starts processes of its own
    python3 manage.py bench SCENARIO  # one load test on a fresh stack (loadtest/run.py)

The first part of this file uses the standard library only: it creates
``.venv``, installs the project into it (again only when ``pyproject.toml``
changed) and re-runs itself with the virtualenv's Python.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("HMDP_VENV", ROOT / ".venv"))
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".hmdp-installed"


def _log(message: str) -> None:
    print(f"[hmdp] {message}", flush=True)


# --- bootstrap (stdlib only) ---------------------------------------------------


def _wanted_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"{digest}:{extras}"


def ensure_environment(extras: str) -> None:
    """Create the virtualenv and install the project (+extras) into it if needed."""
    if not VENV_PYTHON.exists():
        _log(f"creating virtualenv in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = _wanted_stamp(extras)
    installed = STAMP.read_text().split("\n") if STAMP.exists() else []
    if wanted in installed:
        return
    _log(f"installing hmdp-py[{extras}] and its dependencies (first run only)")
    pip = [str(VENV_PYTHON), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.run([*pip, "install", "-q", "-e", target], check=True, cwd=ROOT)
    STAMP.write_text("\n".join([wanted, *installed]))


def reexec_in_venv(extras: str) -> None:
    """Run the rest of this command with the virtualenv's interpreter."""
    ensure_environment(extras)
    if Path(sys.prefix).resolve() != VENV.resolve():
        env = dict(os.environ, VIRTUAL_ENV=str(VENV))
        env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        os.execve(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]], env)


# --- up: the whole system in one terminal ---------------------------------------


def command_up(args: argparse.Namespace) -> int:
    from deploy.supervisor import Supervisor
    from deploy.web_server import web_argv
    from models.demo import ADMIN_PHONE as DEMO_ADMIN_PHONE
    from settings import Settings
    from tasks.app import worker_argv

    settings = Settings.from_env()
    args.host = settings.up_host if args.host is None else args.host
    args.port = settings.up_port if args.port is None else args.port
    args.flower_port = settings.up_flower_port if args.flower_port is None else args.flower_port
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(ROOT))
    # The development command: login codes are written to the log (web/sms.py), and the
    # demo's user 1 is the admin (a deployment names its own: HMDP_ADMIN_PHONES).
    env.setdefault("HMDP_CODE_SENDER", "log")
    env.setdefault("HMDP_ADMIN_PHONES", DEMO_ADMIN_PHONE)
    server = None
    if not settings.redis_url:
        from cache.server import NoEmbeddedRedis, start_shared_server

        try:
            # Recorded in var/redis/server.json: a flask command run beside us without
            # REDIS_URL uses this server instead of starting one on the same data.
            server = start_shared_server(
                settings.var_dir,
                settings.redis_appendfsync,
                settings.redis_server,
                unix_socket=settings.redis_unix_socket,
            )
        except NoEmbeddedRedis as exc:
            _log(exc.message)
            return 1
        env["REDIS_URL"] = server.url
        _log(
            f"embedded redis-server at {server.url} (data in {server.data_dir}, "
            f"appendfsync {settings.redis_appendfsync})"
        )
    bin_dir = Path(sys.executable).parent
    flask = [str(bin_dir / "flask"), "--app", "web"]
    celery = [str(bin_dir / "celery"), "-A", "tasks.worker"]
    supervisor = Supervisor()
    try:
        subprocess.run([*flask, "db", "upgrade"], check=True, cwd=ROOT, env=env)
        if not args.no_seed:
            subprocess.run([*flask, "seed", f"--{args.size}"], check=True, cwd=ROOT, env=env)
        supervisor.start("web", [sys.executable, *web_argv(f"{args.host}:{args.port}")], env)
        supervisor.start(
            "worker",
            [
                str(bin_dir / "celery"),
                *worker_argv(concurrency=args.concurrency, name="worker@%h"),
                "-E",
            ],
            env,
        )
        supervisor.start(
            "beat",
            [
                *celery,
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(settings.var_dir / "celerybeat-schedule"),
            ],
            env,
        )
        supervisor.start(
            "flower",
            [
                *celery,
                "flower",
                "--conf=deploy/flowerconfig.py",
                f"--address={args.host}",
                f"--port={args.flower_port}",
            ],
            env,
        )
        _log(f"web     http://{args.host}:{args.port}  (try /readyz, /shop-type/list)")
        _log(f"flower  http://{args.host}:{args.flower_port}")
        _log(f"metrics http://{args.host}:{args.port}/metrics")
        if env["HMDP_CODE_SENDER"] == "log":
            _log("login codes are written to the web log (HMDP_CODE_SENDER=log)")
        _log("Ctrl-C stops everything")
        return supervisor.wait()
    finally:
        supervisor.stop()
        if server is not None:
            _log("stopping embedded redis-server")
            server.stop()


# --- cluster: 3 web instances behind nginx ------------------------------------------


def command_cluster(args: argparse.Namespace) -> int:
    from deploy.cluster import run

    return run(args)


# --- test -------------------------------------------------------------------------


def ensure_nginx() -> None:
    """Best effort: the cluster tests need nginx; as root, install Debian's package.

    Without it (not root, no package index) those tests skip and say why.
    """
    if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _log("nginx not installed (and not root): the cluster tests will be skipped")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"]
    _log("installing nginx for the cluster tests (apt-get install nginx)")
    for step in ([], [["apt-get", "update", "-q"]]):
        try:
            for cmd in step:
                subprocess.run(cmd, env=env, check=True, timeout=600, capture_output=True)
            subprocess.run(install, env=env, check=True, timeout=600, capture_output=True)
            return
        except (subprocess.SubprocessError, OSError) as exc:
            last = exc
    _log(f"could not install nginx ({last}); the cluster tests will be skipped")


# The fast tier: no test that starts processes of its own, nor the long ones, on one
# backend. The run's shared backends (one redis-server per backend, started once by the
# session fixtures of tests/conftest.py) are not "of its own": every tier needs a real
# Redis. The full suite (CI) runs every backend.
FAST_MARKERS = "not process and not slow"
FAST_BACKENDS = "sqlite"


def _names_workers(pytest_args: list[str]) -> bool:
    """Whether the caller's pytest arguments choose xdist's workers themselves."""
    return any(
        a in ("-n", "--numprocesses") or a.startswith(("-n", "--numprocesses="))
        for a in pytest_args
    )


def command_test(args: argparse.Namespace) -> int:
    """Run the suite; pytest's 'no tests' (5) is a failure here, not a pass.

    ``--fast`` runs ``-m FAST_MARKERS`` first, so a later ``-m`` of the caller's
    replaces it (pytest keeps the last one), on ``FAST_BACKENDS`` unless
    ``HMDP_TEST_BACKENDS`` names others.
    """
    env = dict(os.environ)
    if args.fast:
        env.setdefault("HMDP_TEST_BACKENDS", FAST_BACKENDS)
        # Its tests share no process but the session's Redis: spread them over the cores
        # (pytest-xdist) unless the caller chose a number of workers.
        spread = [] if _names_workers(args.pytest_args) else ["-n", "auto"]
        cmd = [sys.executable, "-m", "pytest", "-m", FAST_MARKERS, *spread, *args.pytest_args]
        _log(f"HMDP_TEST_BACKENDS={env['HMDP_TEST_BACKENDS']} {' '.join(cmd)}")
    else:
        ensure_nginx()  # only the cluster tests (process tests) need it
        cmd = [sys.executable, "-m", "pytest", *args.pytest_args]
        _log(" ".join(cmd))
    return subprocess.call(cmd, cwd=ROOT, env=env)


# --- bench: one load-test scenario ------------------------------------------------


def command_bench(args: argparse.Namespace) -> int:
    """Run loadtest/run.py inside the virtualenv (``bench list`` names the scenarios)."""
    from loadtest.run import exit_on_sigterm
    from loadtest.run import main as bench_main

    exit_on_sigterm()
    return bench_main(args.bench_args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``sys.argv[1:]`` by default); exits with usage on an error."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run web, worker, beat and Flower with demo data")
    # Unset: HMDP_HOST, HMDP_PORT, HMDP_FLOWER_PORT (Settings.up_*).
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--flower-port", type=int)
    up.add_argument(
        "--concurrency",
        type=int,
        help="Celery worker processes (default: tasks.app.WORKER_CONCURRENCY)",
    )
    up.add_argument("--size", choices=["small", "full"], default="small")
    up.add_argument("--no-seed", action="store_true")
    cluster = sub.add_parser(
        "cluster", help="3 web instances behind nginx, worker, beat, Flower (no Docker)"
    )
    from deploy.cluster import build_parser as cluster_options  # stdlib only, like this file

    cluster_options(cluster)
    test = sub.add_parser(
        "test",
        help="run the test suite; every argument but --fast goes to pytest",
        description="Run the test suite (pytest). Every argument but --fast goes to pytest, "
        "in any order: test -x -q tests/test_shops.py, test --fast -k seckill.",
        allow_abbrev=False,  # a pytest option must never be taken for a prefix of ours
    )
    test.add_argument(
        "--fast",
        action="store_true",
        help=f"only the fast tier: pytest -m '{FAST_MARKERS}' on the {FAST_BACKENDS} backend",
    )
    bench = sub.add_parser(
        "bench", help="run a load-test scenario (bench list; bench SCENARIO --help)", add_help=False
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    # The test command hands pytest whatever it does not know, wherever it stands
    # (``test -x -q tests/x.py``, ``test --fast -k seckill``); any other command
    # refuses what it does not know.
    args, unknown = parser.parse_known_args(argv)
    if args.command == "test":
        args.pytest_args = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main() -> int:
    args = parse_args()
    # One environment for both commands: the run command also gets the load-test tools.
    reexec_in_venv("dev")
    sys.path.insert(0, str(ROOT))
    commands = {
        "up": command_up,
        "cluster": command_cluster,
        "test": command_test,
        "bench": command_bench,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
