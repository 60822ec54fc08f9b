"""The local cluster without Docker: ``python3 manage.py cluster``.

Starts, on loopback: Redis (embedded, unless ``REDIS_URL`` is set), migrations and
demo data, three web instances (deploy/web_server.py: granian), nginx in front of them (the OS package,
a child process in the foreground, its config generated from
deploy/nginx.conf.template into ``var/cluster/nginx/``), a Celery worker (with its
metrics exporter), beat and Flower. Prints the URLs; Ctrl-C stops everything.

Web instances and nginx are restarted when they exit, so a rolling restart is
``kill -TERM <pid>`` of one instance at a time (pids in ``var/cluster/state.json``):
the instance drains its in-flight requests, exits, and comes back while nginx
sends new requests to the other two.

``--redis-cluster N [--redis-replicas R]``: the same topology on a local Redis
Cluster of N masters (R replicas each) instead of the single embedded Redis
(cache/redis_cluster.EmbeddedCluster, plain redis-server processes, data under
``var/redis-cluster/``, formed fresh at each start and stopped with the rest).
Celery has no Redis Cluster transport, so the broker is RabbitMQ:
``CELERY_BROKER_URL``, else the local one (:data:`LOCAL_RABBITMQ`); the command
refuses to start when it does not answer.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.supervisor import Supervisor, log

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
PLACEHOLDER = re.compile(r"\$\{(LB_[A-Z0-9_]+)\}")
# The broker of a local Redis Cluster when CELERY_BROKER_URL names none: the machine's
# RabbitMQ with its default user and vhost.
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
# A local cluster's failure detector: a master silent this long is failed over to its
# replica (tests use 1 s; a busy laptop would fail over spuriously on that).
REDIS_CLUSTER_NODE_TIMEOUT_MS = 5000


# --- nginx configuration ------------------------------------------------------------


def trusted_proxies_for(host: str) -> str:
    """HMDP_TRUSTED_PROXIES for instances behind this cluster's nginx.

    nginx connects to the instances from loopback (or from ``host`` when the
    cluster listens on one address of the machine): only those peers'
    X-Forwarded-For counts. On one machine that means every local process.
    """
    networks = ["127.0.0.1/32", "::1/128"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ",".join(networks)
    if not address.is_unspecified and not address.is_loopback:
        networks.append(str(ipaddress.ip_network(address)))
    return ",".join(networks)


def template_variables(template: str | None = None) -> set[str]:
    """The ${LB_*} names the template needs (compose must set exactly these)."""
    text = TEMPLATE.read_text() if template is None else template
    return set(PLACEHOLDER.findall(text))


def render_nginx(values: Mapping[str, str], template: str | None = None) -> str:
    """Fill the template the way the nginx image's envsubst does, refusing gaps."""
    text = TEMPLATE.read_text() if template is None else template
    missing = template_variables(text) - set(values)
    if missing:
        raise KeyError(f"nginx template variables without a value: {sorted(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def upstream_servers(addresses: Sequence[str], max_fails: int = 2, fail_timeout: str = "5s") -> str:
    """The ``server`` lines of the upstream block (one line: it is an env value in compose)."""
    return " ".join(
        f"server {a} max_fails={max_fails} fail_timeout={fail_timeout};" for a in addresses
    )


def cluster_nginx_values(
    listen: str,
    web_addresses: Sequence[str],
    nginx_dir: Path,
    rate: str,
    burst: int,
    conn_per_ip: int,
    frontend_root: Path,
) -> dict[str, str]:
    """Template values for a local nginx: files under ``nginx_dir``, one worker process.

    ``frontend_root`` is the hmdp front end's folder (its index.html, js/, css/,
    imgs/), served at / beside the API; it need not exist.
    """
    return {
        "LB_USER": pwd.getpwuid(os.geteuid()).pw_name,  # non-root: ignored with a warning
        "LB_WORKER_PROCESSES": "1",
        "LB_WORKER_CONNECTIONS": "4096",
        "LB_PID": str(nginx_dir / "nginx.pid"),
        "LB_ERROR_LOG": str(nginx_dir / "error.log"),
        "LB_ACCESS_LOG": str(nginx_dir / "access.log"),
        "LB_TEMP_DIR": str(nginx_dir / "tmp"),
        "LB_LISTEN": listen,
        "LB_UPSTREAM_SERVERS": upstream_servers(web_addresses),
        "LB_RATE": rate,
        "LB_BURST": str(burst),
        "LB_CONN_PER_IP": str(conn_per_ip),
        "LB_FRONTEND_ROOT": str(frontend_root),
    }


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_command(binary: str, conf: Path, nginx_dir: Path) -> list[str]:
    """Foreground nginx with every path under ``nginx_dir`` (no root-owned defaults)."""
    return [
        binary,
        "-p",
        f"{nginx_dir}/",
        "-e",
        str(nginx_dir / "error.log"),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
    ]


def write_nginx_conf(values: Mapping[str, str], nginx_dir: Path) -> Path:
    """Render the config into ``nginx_dir`` and create the directories it names."""
    (nginx_dir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = nginx_dir / "nginx.conf"
    conf.write_text(render_nginx(values))
    return conf


def check_nginx_conf(binary: str, conf: Path, nginx_dir: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on a generated config (raises nothing; the caller reads returncode)."""
    cmd = nginx_command(binary, conf, nginx_dir)
    return subprocess.run([*cmd[:-2], "-t"], capture_output=True, text=True, timeout=30)


# --- the cluster ------------------------------------------------------------------


def _count(low: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"at least {low}")
        return value

    return parse


def _ports(text: str) -> list[int]:
    ports = [int(p) for p in text.split(",") if p.strip()]
    if not ports:
        raise argparse.ArgumentTypeError("at least one web port")
    return ports


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``cluster`` command's options (manage.py adds them to its subcommand)."""
    parser = parser or argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    parser.add_argument("--port", type=int, default=8080, help="nginx (the entry point)")
    parser.add_argument(
        "--web-ports", type=_ports, default=[8081, 8082, 8083], help="comma-separated"
    )
    parser.add_argument(
        "--web-workers", type=int, default=2, help="worker processes each (HMDP_WEB_WORKERS)"
    )
    parser.add_argument("--flower-port", type=int, default=5555)
    parser.add_argument(
        "--worker-metrics-port", type=int, default=9808, help="Celery worker /metrics; 0 = off"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="Celery worker processes (default: tasks.app.WORKER_CONCURRENCY)",
    )
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--no-seed", action="store_true")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--no-beat", action="store_true")
    parser.add_argument(
        "--redis-cluster",
        type=_count(1),
        metavar="N",
        help="run on a local Redis Cluster of N masters (broker: RabbitMQ, CELERY_BROKER_URL "
        f"or {LOCAL_RABBITMQ})",
    )
    parser.add_argument(
        "--redis-replicas",
        type=_count(0),
        default=0,
        metavar="R",
        help="replicas of each master of --redis-cluster (failover)",
    )
    # Every client of a local cluster is 127.0.0.1: per-IP limits are set high by
    # default so that load tests measure the system, not the limiter.
    parser.add_argument("--lb-rate", default="5000r/s", help="nginx per-IP request rate")
    parser.add_argument("--lb-burst", type=int, default=10000)
    parser.add_argument("--lb-conn", type=int, default=4096, help="nginx connections per IP")
    parser.add_argument(
        "--frontend",
        type=Path,
        default=None,
        help="the hmdp front end's folder, served at / (default: var/frontend)",
    )
    return parser


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def broker_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why the broker at ``url`` cannot be used now (None: it accepted a connection)."""
    from kombu import Connection  # in the venv only, like the Celery processes

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # refused, unknown host, bad credentials or vhost ...
        return f"{type(exc).__name__}: {exc}"
    return None


def safe_url(url: str) -> str:
    """``url`` without its password (for the launcher's output)."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def wait_until_up(urls: Sequence[str], supervisor: Supervisor, timeout: float = 90.0) -> None:
    """Poll until every URL answers 200 (nginx: once an instance is behind it) or a child dies."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        for url in list(pending):
            try:
                if _get(url) == 200:
                    pending.remove(url)
            except OSError:
                pass
        for child in supervisor.children.values():
            if child.proc is not None and child.proc.poll() is not None and not child.restart:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not answering after {timeout:.0f}s: {', '.join(pending)}")
        if pending:
            time.sleep(0.3)


class Cluster:
    """Everything the command starts, and the state file describing it."""

    def __init__(self, args: argparse.Namespace, settings):  # settings: settings.Settings
        self.args = args
        self.settings = settings
        self.dir = settings.var_dir / "cluster"
        self.state_file = self.dir / "state.json"
        self.logs = self.dir / "logs"
        self.frontend_root = (args.frontend or settings.var_dir / "frontend").resolve()
        self.ready = False
        self.redis_url = ""
        self.broker_url: str | None = None
        self.redis_cluster = None  # cache.redis_cluster.EmbeddedCluster with --redis-cluster
        self.supervisor = Supervisor(on_change=self.write_state)
        self.web_names = [f"web{i + 1}" for i in range(len(args.web_ports))]

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.args.host}:{port}{path}"

    def write_state(self) -> None:
        """Pids, ports and URLs for operators and tests (rewritten on every (re)start)."""
        a = self.args
        state = {
            "ready": self.ready,
            "launcher_pid": os.getpid(),
            "url": self.url(a.port),
            "redis_url": self.redis_url,
            "redis_cluster": self._redis_cluster_state(),
            "broker_url": safe_url(self.broker_url) if self.broker_url else None,
            "database_url": self.settings.effective_database_url,
            "web": {
                name: {"port": port, "pid": self.supervisor.pid(name), "url": self.url(port)}
                for name, port in zip(self.web_names, a.web_ports, strict=True)
            },
            "nginx": {
                "pid": self.supervisor.pid("nginx"),
                "access_log": str(self.dir / "nginx" / "access.log"),
            },
            "worker": {
                "pid": self.supervisor.pid("worker"),
                "metrics": self.url(a.worker_metrics_port, "/metrics")
                if a.worker_metrics_port
                else None,
            },
            "flower": None if a.no_flower else self.url(a.flower_port),
            "logs": str(self.logs),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _redis_cluster_state(self) -> dict | None:
        """The local Redis Cluster's shape and nodes (None without --redis-cluster)."""
        cluster = self.redis_cluster
        if cluster is None:
            return None
        return {
            "masters": cluster.masters,
            "replicas": cluster.replicas,
            "nodes": [
                {"port": node.port, "pid": node.server.process and node.server.process.pid}
                for node in cluster.nodes
            ],
        }

    def run(self) -> int:
        """Start everything, wait for Ctrl-C (or a fatal exit), stop everything."""
        a = self.args
        nginx = find_nginx()
        if nginx is None:
            log(
                "nginx is not installed (Debian/Ubuntu: apt-get install nginx); cannot run the cluster"
            )
            return 2
        server = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["HMDP_VAR_DIR"] = str(self.settings.var_dir)
        if a.redis_replicas and not a.redis_cluster:
            log("--redis-replicas is the replicas of each master of --redis-cluster N: give N")
            return 2
        if a.redis_cluster:
            refused = self._start_redis_cluster()
            if refused:
                return refused
            env["CELERY_BROKER_URL"] = self.broker_url or ""
        elif self.settings.redis_url:
            self.redis_url = self.settings.redis_url
        else:
            from cache.server import NoEmbeddedRedis, start_shared_server

            try:
                # Recorded like manage.py up's: operator commands without REDIS_URL use it.
                server = start_shared_server(
                    self.settings.var_dir,
                    self.settings.redis_appendfsync,
                    self.settings.redis_server,
                    unix_socket=self.settings.redis_unix_socket,
                )
            except NoEmbeddedRedis as exc:  # its message says what to do
                log(f"cannot start the cluster: {exc.message}")
                return 1
            self.redis_url = server.url
            log(
                f"embedded redis-server at {server.url} (data in {server.data_dir}, "
                f"appendfsync {self.settings.redis_appendfsync})"
            )
        env["REDIS_URL"] = self.redis_url
        env.setdefault("HMDP_TRUSTED_PROXIES", trusted_proxies_for(a.host))
        env.setdefault("HMDP_CODE_SENDER", "log")  # a local cluster: login codes in the web logs
        from models.demo import ADMIN_PHONE

        env.setdefault("HMDP_ADMIN_PHONES", ADMIN_PHONE)  # and the demo's user 1 is the admin
        bin_dir = Path(sys.executable).parent
        flask = [str(bin_dir / "flask"), "--app", "web"]
        celery = [str(bin_dir / "celery"), "-A", "tasks.worker"]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([*flask, "db", "upgrade"], check=True, cwd=ROOT, env=env)
            if not a.no_seed:
                subprocess.run([*flask, "seed", f"--{a.size}"], check=True, cwd=ROOT, env=env)
            self._start_web(env, bin_dir)
            self._start_celery(env, celery)
            self._start_nginx(env, nginx)
            urls = [self.url(p, "/healthz") for p in a.web_ports] + [self.url(a.port, "/healthz")]
            if not a.no_flower:
                urls.append(self.url(a.flower_port, "/healthcheck"))
            wait_until_up(urls, self.supervisor)
            self.ready = True
            self.write_state()
            self._print_urls()
            return self.supervisor.wait()
        finally:
            self.ready = False
            self.supervisor.stop()
            self.write_state()  # not ready any more (operators and scripts read this)
            if server is not None:
                log("stopping embedded redis-server")
                server.stop()
            if self.redis_cluster is not None:
                log("stopping the Redis Cluster")
                self.redis_cluster.stop()
                shutil.rmtree(self.redis_cluster.data_dir, ignore_errors=True)

    def _start_redis_cluster(self) -> int:
        """Check the broker, start and form the Redis Cluster; an exit code if it cannot (else 0)."""
        from cache.redis_cluster import EmbeddedCluster
        from cache.server import NoEmbeddedRedis

        a = self.args
        if self.settings.redis_url:
            log(
                "--redis-cluster starts a Redis Cluster of its own, but REDIS_URL names one "
                f"({self.settings.redis_url}): unset REDIS_URL, or drop --redis-cluster"
            )
            return 2
        self.broker_url = self.settings.celery_broker_url or LOCAL_RABBITMQ
        problem = broker_problem(self.broker_url)
        if problem is not None:
            log(
                f"cannot start the cluster: the Celery broker {safe_url(self.broker_url)} does "
                f"not answer ({problem}). Celery has no Redis Cluster transport, so a Redis "
                "Cluster needs RabbitMQ: start it (apt-get install rabbitmq-server) or set "
                "CELERY_BROKER_URL to one that answers"
            )
            return 1
        # One directory per launcher: a crashed run's leftovers never meet a new cluster.
        data_dir = self.settings.var_dir / "redis-cluster" / f"run-{os.getpid()}"
        shutil.rmtree(data_dir, ignore_errors=True)
        cluster = EmbeddedCluster(
            data_dir,
            masters=a.redis_cluster,
            replicas=a.redis_replicas,
            node_timeout_ms=REDIS_CLUSTER_NODE_TIMEOUT_MS,
            appendfsync=self.settings.redis_appendfsync,
            binary=self.settings.redis_server,
        )
        self.redis_cluster = cluster
        try:
            cluster.start()
        except (RuntimeError, OSError, NoEmbeddedRedis) as exc:
            log(f"cannot start the Redis Cluster: {exc}")
            self.redis_cluster = None
            shutil.rmtree(data_dir, ignore_errors=True)
            return 1
        self.redis_url = cluster.url
        log(
            f"Redis Cluster of {a.redis_cluster} masters x {a.redis_replicas} replicas at "
            f"{cluster.url} (data in {data_dir}); broker {safe_url(self.broker_url)}"
        )
        return 0

    def _start_web(self, env: dict[str, str], bin_dir: Path) -> None:
        from deploy.web_server import web_argv  # standard library only, like this file

        a = self.args
        web_env = dict(env, HMDP_WEB_WORKERS=str(a.web_workers))
        web_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # deploy/web_server.py: one dir per instance
        for name, port in zip(self.web_names, a.web_ports, strict=True):
            self.supervisor.start(
                name,
                [str(bin_dir / "python"), *web_argv(f"{a.host}:{port}", name=f"hmdp-{name}")],
                web_env,
                restart=True,
                stdout=self.logs / f"{name}.log",
            )

    def _start_celery(self, env: dict[str, str], celery: list[str]) -> None:
        from tasks.app import (
            worker_argv,
        )  # not at import: manage.py reads this file before the venv exists

        a = self.args
        metrics_dir = self.settings.var_dir / "prometheus" / "worker"
        metrics_dir.mkdir(parents=True, exist_ok=True)  # must exist before the import
        worker_env = dict(
            env,
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            HMDP_WORKER_METRICS_PORT=str(a.worker_metrics_port),
            HMDP_WORKER_METRICS_HOST=a.host,
        )
        self.supervisor.start(
            "worker",
            [
                celery[0],
                *worker_argv(concurrency=a.concurrency, name=f"cluster-worker-{a.port}@%h"),
                "-E",
            ],
            worker_env,
            stdout=self.logs / "worker.log",
        )
        if not a.no_beat:
            self.supervisor.start(
                "beat",
                [
                    *celery,
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(self.dir / "celerybeat-schedule"),
                ],
                env,
                stdout=self.logs / "beat.log",
            )
        if not a.no_flower:
            self.supervisor.start(
                "flower",
                [
                    *celery,
                    "flower",
                    "--conf=deploy/flowerconfig.py",
                    f"--address={a.host}",
                    f"--port={a.flower_port}",
                ],
                env,
                stdout=self.logs / "flower.log",
            )

    def _start_nginx(self, env: dict[str, str], binary: str) -> None:
        a = self.args
        nginx_dir = self.dir / "nginx"
        values = cluster_nginx_values(
            f"{a.host}:{a.port}",
            [f"{a.host}:{p}" for p in a.web_ports],
            nginx_dir,
            a.lb_rate,
            a.lb_burst,
            a.lb_conn,
            self.frontend_root,
        )
        conf = write_nginx_conf(values, nginx_dir)
        checked = check_nginx_conf(binary, conf, nginx_dir)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed for {conf}:\n{checked.stderr}")
        self.supervisor.start(
            "nginx",
            nginx_command(binary, conf, nginx_dir),
            env,
            restart=True,
            stdout=self.logs / "nginx.log",
        )

    def _print_urls(self) -> None:
        a = self.args
        log(f"cluster   {self.url(a.port)}  (nginx -> {', '.join(map(str, a.web_ports))})")
        log(f"front end {self.url(a.port)}/  (its files: {self.frontend_root}; API at /api/)")
        for name, port in zip(self.web_names, a.web_ports, strict=True):
            log(f"{name:<9} {self.url(port)}  metrics {self.url(port, '/metrics')}")
        if a.worker_metrics_port:
            log(f"worker    metrics {self.url(a.worker_metrics_port, '/metrics')}")
        if not a.no_flower:
            log(f"flower    {self.url(a.flower_port)}  (Celery metrics at /metrics)")
        log(f"logs      {self.logs}/*.log, nginx JSON access log {self.dir / 'nginx'}/access.log")
        log(f"state     {self.state_file}")
        log("Ctrl-C stops everything; kill -TERM a web pid for a rolling restart")


def run(args: argparse.Namespace) -> int:
    """Entry point used by ``manage.py cluster`` (inside the virtualenv)."""
    from settings import Settings

    return Cluster(args, Settings.from_env()).run()


if __name__ == "__main__":  # python -m deploy.cluster (from the repository root, in the venv)
    sys.exit(run(build_parser().parse_args()))
