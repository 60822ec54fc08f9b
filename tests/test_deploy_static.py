"""The deployment files, checked without Docker: compose, Dockerfile, nginx, Prometheus,
alerts and Grafana must agree with the code and with each other."""

from __future__ import annotations

import ast
import importlib.util
import ipaddress
import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import prometheus_client
import pytest
import yaml
from support.env import ROOT

import celeryconfig
import metrics
from deploy import cluster
from deploy.web_server import APP, web_argv
from settings import Settings, cluster_nodes
from tasks.app import WORKER_CONCURRENCY

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
APP_IMAGE = "hmdp-py:local"
WEB = ["web1", "web2", "web3"]
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def resolve(value: object) -> str:
    """A compose value with ${VAR:-default} replaced by its default (no host env)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def app_services() -> Iterator[tuple[str, dict]]:
    for name, service in SERVICES.items():
        if service.get("image") == APP_IMAGE or "build" in service:
            yield name, service


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: resolve(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return [resolve(c) for c in cmd] if isinstance(cmd, list) else shlex.split(resolve(cmd))


def option(cmd: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in a command line."""
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def settings_env_names() -> set[str]:
    """Every environment variable Settings.from_env reads."""
    read: set[str] = set()

    class Recorder(dict):
        def get(self, key, default=None):
            read.add(key)
            return default

        def __getitem__(self, key):
            read.add(key)
            raise KeyError(key)

        def __contains__(self, key):
            read.add(key)
            return False

    Settings.from_env(Recorder())
    return read


def module_defines(module: str, attr: str) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not importable"
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            targets = [node.name]
        if attr in targets:
            return True
    return False


# --- compose --------------------------------------------------------------------------


def test_compose_has_the_whole_stack():
    expected = {
        *WEB,
        "nginx",
        "mysql",
        "redis",
        "worker",
        "beat",
        "flower",
        "prometheus",
        "grafana",
        "migrate",
    }
    assert expected <= set(SERVICES)
    assert SERVICES["mysql"]["image"].startswith("mysql:8.")
    assert SERVICES["redis"]["image"].startswith("redis:7.")
    redis_cmd = command_of(SERVICES["redis"])
    assert option(redis_cmd, "--appendonly") == "yes"
    # HMDP_REDIS_APPENDFSYNC chooses the fsync policy, with the default Settings declares
    assert option(redis_cmd, "--appendfsync") == Settings().redis_appendfsync
    raw = SERVICES["redis"]["command"]
    assert raw[raw.index("--appendfsync") + 1].startswith("${HMDP_REDIS_APPENDFSYNC:-")


def test_every_image_is_pinned_to_an_exact_tag():
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        if image == APP_IMAGE:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image}"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?", base), base


def test_beat_runs_exactly_once():
    beat = SERVICES["beat"]
    assert beat.get("deploy", {}).get("replicas") == 1
    assert "scale" not in beat
    beats = [
        n for n, s in app_services() if option(command_of(s), "-A") and "beat" in command_of(s)
    ]
    assert beats == ["beat"]


def test_app_commands_point_at_real_modules_and_commands():
    from web import create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    flask_commands = set(app.cli.list_commands(None))
    queues = {route["queue"] for route in celeryconfig.task_routes.values()} | {
        celeryconfig.task_default_queue
    }
    for name, service in app_services():
        cmd = command_of(service)
        assert cmd, f"{name} has no command"
        tool = cmd[0]
        if tool == "python":  # the web tier: exactly the shared launcher's command
            assert cmd[1:] == web_argv(option(cmd, "--bind")), cmd
            module, attr = APP.split(":")
            assert module_defines(module, attr), APP
        elif tool == "celery":
            target = option(cmd, "-A")
            assert module_defines(target, "app"), target
            sub = cmd[3]
            assert sub in {"worker", "beat", "flower"}, cmd
            if sub == "worker":
                assert set(option(cmd, "-Q").split(",")) == queues
                assert "-E" in cmd  # task events for Flower
                # the deployed count, which the benchmarks measure by default
                assert option(cmd, "--concurrency") == str(WORKER_CONCURRENCY), cmd
            if sub == "flower":
                assert (ROOT / option(cmd, "--conf")).is_file()  # JSON logs for Flower too
        elif tool == "flask":
            assert option(cmd, "--app") == "web"
            assert cmd[3] in flask_commands, cmd
            if cmd[3] == "db":
                assert cmd[4] in app.cli.get_command(None, "db").list_commands(None)
        else:
            raise AssertionError(f"{name}: unexpected command {cmd}")
    app.extensions["hmdp"].close()


def test_web_server_command_is_the_deployed_granian_with_its_settings():
    from deploy.web_server import server_argv

    settings = Settings.from_env(
        {"HMDP_WEB_WORKERS": "3", "HMDP_WEB_THREADS": "2", "HMDP_WEB_GRACEFUL_TIMEOUT": "25"}
    )
    cmd = server_argv(settings, "0.0.0.0:8000", log_config=Path("/x/log.json"))
    assert cmd[1:3] == ["-m", "granian"] and cmd[-1] == APP
    for name, value in {
        "--interface": "wsgi",
        "--host": "0.0.0.0",
        "--port": "8000",
        "--workers": "3",
        "--blocking-threads": "2",
        "--workers-kill-timeout": "25",
        "--backlog": str(settings.web_backlog),
        "--backpressure": str(settings.web_backlog),
        "--log-config": "/x/log.json",
    }.items():
        assert option(cmd, name) == value, name
    assert {"--no-ws", "--respawn-failed-workers", "--http1-keep-alive"} <= set(cmd)
    default = server_argv(Settings.from_env({}), "127.0.0.1:1")
    assert option(default, "--workers") == str(os.cpu_count())
    assert option(default, "--blocking-threads") == "2"
    gunicorn = server_argv(Settings.from_env({"HMDP_WEB_SERVER": "gunicorn"}), "127.0.0.1:1")
    assert cmd[1:3] == ["-m", "granian"] and gunicorn[1:3] == ["-m", "gunicorn"]
    assert Path(option(gunicorn, "-c")).is_file()
    with pytest.raises(ValueError):
        Settings.from_env({"HMDP_WEB_SERVER": "uwsgi"})


def test_mounted_files_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_app_environment_is_read_by_settings_or_a_known_tool():
    allowed = settings_env_names()
    assert "REDIS_URL" in allowed and "PROMETHEUS_MULTIPROC_DIR" in allowed
    for name, service in app_services():
        unknown = set(env_of(service)) - allowed
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
    dockerfile_env = re.findall(r"\b(HMDP_[A-Z_]+)=", (DEPLOY / "Dockerfile").read_text())
    assert set(dockerfile_env) <= allowed
    # Settings must accept every value compose gives it.
    for _name, service in app_services():
        Settings.from_env(env_of(service))


def test_third_party_environment_is_what_those_images_read():
    prefixes = {
        "mysql": ("MYSQL_",),
        "grafana": ("GF_",),
        "redis-exporter": ("REDIS_ADDR",),
        "mysqld-exporter": ("MYSQLD_EXPORTER_",),
        "nginx": ("NGINX_ENVSUBST_", "LB_"),
    }
    for name, allowed in prefixes.items():
        for key in env_of(SERVICES[name]):
            assert key.startswith(allowed), f"{name}: {key}"
    nginx_env = env_of(SERVICES["nginx"])
    lb = {k for k in nginx_env if k.startswith("LB_")}
    assert lb == cluster.template_variables()
    assert nginx_env["NGINX_ENVSUBST_FILTER"] == "^LB_"
    assert nginx_env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert (
        "./deploy/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro"
        in (SERVICES["nginx"]["volumes"])
    )


def test_connection_urls_agree_with_the_database_and_redis_services():
    mysql = env_of(SERVICES["mysql"])
    for _name, service in app_services():
        env = env_of(service)
        db = urlsplit(env["DATABASE_URL"])
        assert db.scheme == "mysql+pymysql"
        assert (db.hostname, db.port or 3306) == ("mysql", 3306)
        assert db.path.lstrip("/") == mysql["MYSQL_DATABASE"]
        assert (db.username, db.password) == (mysql["MYSQL_USER"], mysql["MYSQL_PASSWORD"])
        redis_url = urlsplit(env["REDIS_URL"])
        assert (redis_url.hostname, redis_url.port) == ("redis", 6379)
        assert "--port" not in command_of(SERVICES["redis"])  # so it listens on 6379
    assert env_of(SERVICES["redis-exporter"])["REDIS_ADDR"] == "redis://redis:6379"
    exporter = env_of(SERVICES["mysqld-exporter"])
    assert exporter["MYSQLD_EXPORTER_PASSWORD"] == mysql["MYSQL_ROOT_PASSWORD"]


def test_ports_agree_between_web_nginx_prometheus_and_flower():
    web_ports = set()
    for name in WEB:
        bind = option(command_of(SERVICES[name]), "--bind")
        host, port = bind.rsplit(":", 1)
        assert host == "0.0.0.0"
        web_ports.add((name, int(port)))
    upstreams = set(
        re.findall(r"server (\S+):(\d+)", env_of(SERVICES["nginx"])["LB_UPSTREAM_SERVERS"])
    )
    assert {(h, int(p)) for h, p in upstreams} == web_ports
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    web_targets = {t for c in jobs["hmdp-web"]["static_configs"] for t in c["targets"]}
    assert {f"{n}:{p}" for n, p in web_ports} == web_targets
    flower_port = option(command_of(SERVICES["flower"]), "--port")
    assert jobs["flower"]["static_configs"][0]["targets"] == [f"flower:{flower_port}"]
    worker_env = env_of(SERVICES["worker"])
    (sd,) = jobs["hmdp-worker"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == int(worker_env["HMDP_WORKER_METRICS_PORT"])
    assert worker_env["PROMETHEUS_MULTIPROC_DIR"]
    assert worker_env["HMDP_WORKER_METRICS_HOST"] == "0.0.0.0"
    for job in jobs.values():
        for config in job.get("static_configs", []):
            for target in config["targets"]:
                host = target.split(":")[0]
                assert host in SERVICES or host == "localhost", target
    # The prometheus service mounts exactly the rule file the config loads.
    mounts = dict(
        v.split(":")[:2][::-1] for v in SERVICES["prometheus"]["volumes"] if v.startswith("./")
    )
    for rule_file in prom["rule_files"]:
        assert mounts[rule_file] == "./deploy/alerts.yml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus.yml"


def test_health_checks_and_dependency_conditions():
    needs_health = {*WEB, "nginx", "mysql", "redis", "worker", "flower", "prometheus", "grafana"}
    for name in needs_health:
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, spec in depends.items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits on {target}'s health"
            elif condition == "service_completed_successfully":
                assert SERVICES[target].get("restart") == "no", target
            else:
                assert condition == "service_started"
    for name in WEB:
        assert SERVICES[name]["depends_on"]["mysql"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def _seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)s", str(text))
    assert m, text
    return int(m.group(1))


def test_stop_grace_periods_cover_graceful_shutdown():
    for name in WEB:
        env = env_of(SERVICES[name])
        graceful = Settings.from_env(env).web_graceful_timeout
        assert _seconds(SERVICES[name]["stop_grace_period"]) > graceful
    assert _seconds(SERVICES["worker"]["stop_grace_period"]) > celeryconfig.task_time_limit


def test_dockerfile_copies_the_application_and_prepares_the_metrics_dir():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY . ." in dockerfile and (ROOT / ".dockerignore").exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "var" in ignored
    metrics_dir = env_of(SERVICES["worker"])["PROMETHEUS_MULTIPROC_DIR"]
    assert f"mkdir -p {metrics_dir}" in dockerfile
    cmd = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M).group(1))
    assert cmd == ["python", *web_argv("0.0.0.0:8000")]


# --- nginx ------------------------------------------------------------------------------


TEMPLATE = (DEPLOY / "nginx.conf.template").read_text()


def _cluster_values(tmp_path: Path) -> dict[str, str]:
    return cluster.cluster_nginx_values(
        "127.0.0.1:18080",
        ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"],
        tmp_path / "nginx",
        "10r/s",
        20,
        10,
        tmp_path / "frontend",
    )


def test_compose_sends_codes_through_a_gateway_never_the_log():
    from web.sms import HttpGatewaySender, sender_from_settings

    for name, service in app_services():
        settings = Settings.from_env(env_of(service))
        assert settings.code_sender == "http", name
        assert isinstance(sender_from_settings(settings), HttpGatewaySender)
        # Switched to the development sender, this stack refuses to start.
        with pytest.raises(RuntimeError, match="refuses to start"):
            sender_from_settings(settings.with_(code_sender="log"))


def test_compose_ships_no_admin():
    """No admin phone unless the operator names one (the seeded demo grants no role either:
    tests/test_demo_data.py)."""
    for name, service in app_services():
        assert Settings.from_env(env_of(service)).admin_phones == (), name


def test_web_trusts_x_forwarded_for_from_nginx_only():
    """The web tier believes X-Forwarded-For from nginx's fixed address and nobody else."""
    (subnet,) = (c["subnet"] for c in COMPOSE["networks"]["default"]["ipam"]["config"])
    nginx_address = ipaddress.ip_address(SERVICES["nginx"]["networks"]["default"]["ipv4_address"])
    assert nginx_address in ipaddress.ip_network(subnet)
    for name in WEB:
        proxies = Settings.from_env(env_of(SERVICES[name])).trusted_proxies
        assert proxies == (ipaddress.ip_network(nginx_address),), name
    assert "$proxy_add_x_forwarded_for" in re.sub(r"#.*", "", TEMPLATE)
    # The local cluster: nginx reaches the instances over loopback (or the one address
    # everything listens on), never a wildcard.
    assert cluster.trusted_proxies_for("127.0.0.1") == "127.0.0.1/32,::1/128"
    assert cluster.trusted_proxies_for("0.0.0.0") == "127.0.0.1/32,::1/128"
    assert cluster.trusted_proxies_for("192.0.2.5") == "127.0.0.1/32,::1/128,192.0.2.5/32"
    assert cluster.trusted_proxies_for("localhost") == "127.0.0.1/32,::1/128"


def test_nginx_template_policies():
    body = re.sub(r"#.*", "", TEMPLATE)  # directives only, not the comments
    assert "least_conn;" in body
    assert re.search(r"keepalive \d+;", body) and 'proxy_set_header Connection "";' in body
    assert "proxy_http_version 1.1;" in body
    next_upstream = re.search(r"proxy_next_upstream ([^;]+);", body).group(1).split()
    assert "error" in next_upstream and "non_idempotent" not in next_upstream  # POST never retried
    assert "limit_req zone=" in body and "limit_conn " in body
    assert "limit_req_status 429;" in body
    assert "$upstream_response_time" in body and "escape=json" in body
    assert "X-Request-ID" in body
    assert not re.search(r"^\s*daemon\b", body, re.M)
    # /metrics and the probes are not rate limited.
    for path in ("/metrics", "/healthz", "/readyz"):
        block = re.search(r"location = " + re.escape(path) + r" \{([^}]*)\}", body).group(1)
        assert "limit_req" not in block and "limit_conn" not in block
    servers = env_of(SERVICES["nginx"])["LB_UPSTREAM_SERVERS"]
    assert servers.count("max_fails=") == 3 and servers.count("fail_timeout=") == 3


def test_nginx_template_renders_completely_for_compose_and_cluster(tmp_path):
    compose_env = env_of(SERVICES["nginx"])
    rendered = cluster.render_nginx({k: v for k, v in compose_env.items() if k.startswith("LB_")})
    assert not cluster.PLACEHOLDER.search(rendered)
    assert "$remote_addr" in rendered  # nginx's own variables untouched
    assert not cluster.PLACEHOLDER.search(cluster.render_nginx(_cluster_values(tmp_path)))
    with pytest.raises(KeyError):
        cluster.render_nginx({"LB_LISTEN": "80"})


@pytest.mark.process
def test_nginx_accepts_the_generated_config(tmp_path):
    binary = cluster.find_nginx()
    if binary is None:
        pytest.skip("nginx not installed (manage.py test installs it when run as root)")
    nginx_dir = tmp_path / "nginx"
    conf = cluster.write_nginx_conf(_cluster_values(tmp_path), nginx_dir)
    result = cluster.check_nginx_conf(binary, conf, nginx_dir)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # and rejects a broken one (the check can fail)
    conf.write_text(conf.read_text().replace("least_conn;", "least_conn"))
    assert cluster.check_nginx_conf(binary, conf, nginx_dir).returncode != 0


# --- Prometheus rules and Grafana ---------------------------------------------------------


def known_metric_names() -> set[str]:
    """Every series name our code, the Flask exporter and Flower can expose."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, prometheus_client.metrics.MetricWrapperBase):
            for family in obj.collect():
                names |= {s.name for s in family.samples}
                names.add(family.name)
            base = obj._name
            names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
    names |= set(re.findall(r'"(hmdp_[a-z_]+)"', (ROOT / "web" / "metrics.py").read_text()))
    duration = "flask_http_request_duration_seconds"
    names |= {f"{duration}_bucket", f"{duration}_count", f"{duration}_sum"}
    names |= {"flask_http_request_total", "flask_http_request_exceptions_total"}
    flower_spec = importlib.util.find_spec("flower.events")
    flower = set(re.findall(r"'(flower_[a-z_]+)'", Path(flower_spec.origin).read_text()))
    names |= flower | {f"{n}_bucket" for n in flower} | {f"{n}_total" for n in flower}
    names |= {"redis_up", "up"}  # redis_exporter, Prometheus itself
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:hmdp|flask|flower)_[a-z0-9_]+|redis_up)\b", expr))


ALERTS = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]


def test_alert_rules_are_complete():
    for rule in RULES:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"].strip()
        assert len(rule["annotations"]["runbook"].strip()) > 40
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_the_seed_alerts_exist_with_their_thresholds():
    by_name = {rule["alert"]: rule["expr"] for rule in RULES}
    assert (
        'status=~"5.."' in by_name["HmdpHighErrorRate"] and "0.05" in by_name["HmdpHighErrorRate"]
    )
    assert "histogram_quantile(0.99" in by_name["HmdpHighP99Latency"]
    assert "> 0.9" in by_name["HmdpDbPoolExhausted"]
    assert "hmdp_redis_up == 0" in by_name["HmdpRedisDown"]
    assert (
        "hmdp_orders_backlog" in by_name["HmdpOrderBacklog"]
        and "10000" in by_name["HmdpOrderBacklog"]
    )
    assert (
        "hmdp_orders_dead_letters" in by_name["HmdpDeadLetters"]
        and "> 0" in by_name["HmdpDeadLetters"]
    )


def test_alerts_and_dashboard_use_only_metrics_that_exist():
    known = known_metric_names()
    for rule in RULES:
        unknown = metric_names_in(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: {unknown}"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hmdp.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            unknown = metric_names_in(target["expr"]) - known
            assert not unknown, f"{panel['title']}: {unknown}"


def test_grafana_provisioning_wires_datasource_and_dashboard():
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "hmdp.yml").read_text()
    )["providers"][0]
    mounts = dict(
        v.split(":")[:2][::-1] for v in SERVICES["grafana"]["volumes"] if v.startswith("./")
    )
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hmdp.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "by route",
        "latency",
        "cache hit",
        "seckill",
        "backlog",
        "pending",
        "dead letters",
        "lock wait",
        "rate-limit",
        "db pool",
    ):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"])


def test_promtool_style_yaml_sanity():
    """Prometheus config fields Prometheus itself would reject if missing or misspelled."""
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert set(prom) <= {"global", "rule_files", "scrape_configs", "alerting"}
    for job in prom["scrape_configs"]:
        assert set(job) <= {"job_name", "metrics_path", "static_configs", "dns_sd_configs"}
        assert "static_configs" in job or "dns_sd_configs" in job
    names = [job["job_name"] for job in prom["scrape_configs"]]
    assert len(names) == len(set(names))


def test_compose_mounts_the_front_end_into_nginx_and_shares_the_uploads():
    """nginx serves the front end from LB_FRONTEND_ROOT; every instance stores and serves
    photos in one volume (a photo uploaded through one instance is found by each)."""
    nginx_env = env_of(SERVICES["nginx"])
    targets = [v.split(":")[-2] for v in SERVICES["nginx"]["volumes"] if v.endswith(":ro")]
    assert nginx_env["LB_FRONTEND_ROOT"] in targets
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    var_dir = re.search(r"HMDP_VAR_DIR=(\S+)", dockerfile).group(1)  # the image's ENV
    uploads = set()
    for name in WEB:
        env = {"HMDP_VAR_DIR": var_dir, **env_of(SERVICES[name])}
        images_dir = str(Settings.from_env(env).images_dir)
        (volume,) = (v for v in SERVICES[name]["volumes"] if v.split(":")[1] == images_dir)
        uploads.add(volume.split(":")[0])
    assert len(uploads) == 1 and uploads <= set(COMPOSE["volumes"])


# --- compose profile redis-cluster ------------------------------------------------------

CLUSTER_PROFILE = "redis-cluster"
CLUSTER_ENV = DEPLOY / "redis-cluster.env"


def env_file(path: Path) -> dict[str, str]:
    """A compose --env-file: KEY=VALUE lines, ${VAR:-default} as its default (no host env)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = resolve(value.strip())
    return values


def profile_services() -> dict[str, dict]:
    return {n: s for n, s in SERVICES.items() if CLUSTER_PROFILE in (s.get("profiles") or [])}


def redis_nodes() -> dict[str, dict]:
    return {n: s for n, s in profile_services().items() if command_of(s)[:1] == ["redis-server"]}


def node_address(service: dict) -> str:
    return f"{service['networks']['default']['ipv4_address']}:6379"


def test_the_redis_cluster_profile_has_six_nodes_a_create_job_and_rabbitmq():
    assert set(profile_services()) == {
        *(f"redis-node-{i}" for i in range(1, 7)),
        "redis-cluster-create",
        "rabbitmq",
    }
    # Nothing of the default stack is in the profile: without it, the stack is as before.
    assert not [n for n, s in app_services() if s.get("profiles")]
    addresses = set()
    subnet = ipaddress.ip_network(COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"])
    nginx_ip = SERVICES["nginx"]["networks"]["default"]["ipv4_address"]
    for name, node in redis_nodes().items():
        cmd = command_of(node)
        assert option(cmd, "--port") == "6379", name
        assert option(cmd, "--cluster-enabled") == "yes", name
        assert option(cmd, "--cluster-require-full-coverage") == "yes", name
        assert option(cmd, "--appendonly") == "yes", name
        assert option(cmd, "--appendfsync") == Settings().redis_appendfsync, name
        assert option(cmd, "--cluster-config-file").startswith("/data/"), name
        (volume,) = node["volumes"]
        assert volume == f"{name}:/data" and name in COMPOSE["volumes"], name
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], name
        ip = node["networks"]["default"]["ipv4_address"]
        assert ipaddress.ip_address(ip) in subnet and ip != nginx_ip, name
        addresses.add(node_address(node))
    assert len(addresses) == 6  # one fixed address each: CLUSTER MEET takes an IP


def test_the_create_job_forms_three_masters_with_a_replica_each_from_every_node():
    job = SERVICES["redis-cluster-create"]
    assert job["restart"] == "no"  # one shot: the app waits for it to complete
    assert job["image"] == SERVICES["redis"]["image"]  # the same redis-cli as the servers
    (script,) = job["command"]
    create = shlex.split(script.split("||", 1)[1].split(";", 1)[0])
    assert create[:3] == ["redis-cli", "--cluster", "create"]
    listed = [arg for arg in create[3:] if not arg.startswith("--") and ":" in arg]
    nodes = redis_nodes()
    assert sorted(listed) == sorted(node_address(n) for n in nodes.values())
    assert option(create, "--cluster-replicas") == "1"
    assert "--cluster-yes" in create  # no prompt: nobody answers it
    assert len(listed) // (1 + int(option(create, "--cluster-replicas"))) == 3  # masters
    # It waits for every node, and ends only when the cluster serves every slot.
    assert job["depends_on"] == {name: {"condition": "service_healthy"} for name in nodes}
    wait = script.split(";", 1)[1]
    assert wait.strip().startswith("until redis-cli") and "cluster_state:ok" in wait, wait


def test_the_env_file_points_every_app_service_at_the_cluster_and_rabbitmq():
    values = env_file(CLUSTER_ENV)
    assert values["COMPOSE_PROFILES"] == CLUSTER_PROFILE
    _, nodes = cluster_nodes(values["REDIS_URL"])
    known = {node_address(s) for s in redis_nodes().values()}
    assert nodes and {f"{h}:{p}" for h, p in nodes} <= known
    broker = urlsplit(values["CELERY_BROKER_URL"])
    rabbit = env_of(SERVICES["rabbitmq"])
    assert set(rabbit) == {
        "RABBITMQ_DEFAULT_USER",
        "RABBITMQ_DEFAULT_PASS",
        "RABBITMQ_DEFAULT_VHOST",
    }
    assert broker.scheme == "amqp" and (broker.hostname, broker.port) == ("rabbitmq", 5672)
    assert (broker.username, broker.password) == (
        rabbit["RABBITMQ_DEFAULT_USER"],
        rabbit["RABBITMQ_DEFAULT_PASS"],
    )
    assert broker.path.lstrip("/") == rabbit["RABBITMQ_DEFAULT_VHOST"]
    assert SERVICES["rabbitmq"]["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    for name, service in app_services():
        raw = service["environment"]
        # The env file reaches the app only through these two interpolations ...
        assert raw["REDIS_URL"].startswith("${REDIS_URL:-"), name
        assert raw["CELERY_BROKER_URL"] == "${CELERY_BROKER_URL:-}", name
        # ... and with it, every app service is a valid cluster configuration.
        env = {**env_of(service), **{k: values[k] for k in ("REDIS_URL", "CELERY_BROKER_URL")}}
        settings = Settings.from_env(env)
        assert settings.redis_url == values["REDIS_URL"], name
        assert settings.celery_broker_url == values["CELERY_BROKER_URL"], name


def test_app_services_wait_for_the_formed_cluster_and_rabbitmq_when_the_profile_runs():
    for name, service in app_services():
        depends = service.get("depends_on") or {}
        if name == "seed":  # it runs after migrate, which waits
            assert depends["migrate"]["condition"] == "service_completed_successfully"
            continue
        assert depends.get("redis-cluster-create") == {
            "condition": "service_completed_successfully",
            "required": False,  # without the profile, no such service: ignored
        }, name
        assert depends.get("rabbitmq") == {"condition": "service_healthy", "required": False}, name
