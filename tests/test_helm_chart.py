"""The Helm chart in helm/gateway, rendered by the real Helm SDK and checked against Kubernetes.

Helm is PyPI ``helm-python-sdk`` (import ``helm_python``): Helm v4's Go SDK behind a C ABI,
bundled in the wheel, so lint, schema validation and rendering run offline with no helm binary.
Every rendered manifest is validated by PyPI ``kubernetes-validate``, which ships the JSON
schemas of each Kubernetes minor version (strict: unknown fields are errors). The Prometheus
Operator's CRDs (ServiceMonitor, PrometheusRule) have no schema there and are checked by hand.
Both tools are dev extras: without them these tests skip locally and fail in CI.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig
from gateway.config_loader import load_config, parse_config
from gateway.stores import cache_url

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "gateway"
RELEASE = "demo"
NAMESPACE = "llm"
FULLNAME = "demo-gateway"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", "latest")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CONFIG_ENV = {"OPENAI_API_KEY": "sk-x", "GATEWAY_JWT_SECRET": "x" * 40}

# Every optional resource switched on, with values that exercise their optional fields.
ALL_OPTIONAL: dict[str, Any] = yaml.safe_load(
    (CHART / "ci" / "all-optional-values.yaml").read_text()
)


def _require(module: str, package: str) -> ModuleType:
    """Import a dev dependency; skip without it locally, fail in CI (where CI is set)."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or the native Helm library failing to load
        reason = (
            f"{package} is unusable here ({exc}); install the dev extras: pip install -e '.[dev]'"
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> ModuleType:
    return _require("helm_python", "helm-python-sdk")


@pytest.fixture(scope="module")
def kubernetes_validate() -> ModuleType:
    return _require("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="module")
def chart(helm: ModuleType) -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_files(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path (relative to templates/) -> rendered text, like `helm template`."""
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path.split("/templates/", 1)[1]: text for path, text in rendered.items()}


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in render_files(chart, values).items():
        if path == "NOTES.txt":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def only(docs: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {[d['kind'] for d in docs]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def container(docs: list[dict[str, Any]], kind: str = "Deployment", name: str = FULLNAME) -> Any:
    (main,) = only(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    return main


def env_of(main: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in main.get("env", [])}


def assert_valid_kubernetes(kubernetes_validate: ModuleType, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            if version == "latest":
                version = kubernetes_validate.latest_version()
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {exc}")


def gateway_yaml(docs: list[dict[str, Any]]) -> str:
    text: str = only(docs, "ConfigMap")["data"]["gateway.yaml"]
    return text


def render_error(helm: ModuleType, chart: Any, values: dict[str, Any]) -> str:
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


# --- lint and the default render ------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_OPTIONAL], ids=["defaults", "all-optional"])
def test_lint_passes_strict(helm: ModuleType, values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.25.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_default_render_is_valid_kubernetes(chart: Any, kubernetes_validate: ModuleType) -> None:
    docs = render(chart)
    assert kinds(docs) == {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"}
    assert_valid_kubernetes(kubernetes_validate, docs)


def test_every_resource_carries_the_standard_labels(chart: Any) -> None:
    for doc in render(chart, ALL_OPTIONAL):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == f"gateway-{chart.version}"
        assert labels["app.kubernetes.io/component"] in {"gateway", "redis", "redis-cache"}


def test_pod_and_container_are_locked_down(chart: Any) -> None:
    docs = render(chart)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(docs)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_probes_use_healthz_and_readyz_on_the_http_port(chart: Any) -> None:
    main = container(render(chart))
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_container_runs_the_image_default_command_with_mounted_config(chart: Any) -> None:
    docs = render(chart)
    main = container(docs)
    assert main["image"] == "ghcr.io/example/openai-team-gateway:0.1.0"
    assert main["args"] == ["serve", "--config", "/etc/gateway/gateway.yaml"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    # A directory mount (no subPath), so ConfigMap updates reach the running pod.
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/gateway", "readOnly": True}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    volumes = {
        v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["config"]["configMap"]["name"] == FULLNAME
    assert "emptyDir" in volumes["tmp"]


def test_service_is_cluster_ip_on_port_8080_named_http(chart: Any) -> None:
    docs = render(chart)
    service = only(docs, "Service")["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [
        {
            "name": "http",
            "port": 8080,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_secret_feeds_the_env_and_generates_a_jwt_secret(chart: Any) -> None:
    docs = render(chart, {"secrets": {"openaiApiKey": "sk-real"}})
    secret = only(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["OPENAI_API_KEY"] == "sk-real"
    assert len(data["GATEWAY_JWT_SECRET"]) >= 32
    assert "REDIS_URL" not in data  # no Redis configured: the embedded store
    env = env_of(container(docs))
    for name in ("OPENAI_API_KEY", "GATEWAY_JWT_SECRET"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": name}
    assert "REDIS_URL" not in env


def test_redis_url_goes_through_the_secret(chart: Any) -> None:
    docs = render(chart, {"redis": {"url": "redis://:pw@redis.example:6379/2"}})
    secret = only(docs, "Secret")
    assert base64.b64decode(secret["data"]["REDIS_URL"]) == b"redis://:pw@redis.example:6379/2"
    ref = env_of(container(docs))["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "REDIS_URL"}


# --- config: the ConfigMap, the checksum and hot reload -------------------------------------------


def test_configmap_gateway_yaml_validates_with_the_gateway_loader(chart: Any) -> None:
    text = gateway_yaml(render(chart))
    data = yaml.safe_load(text)
    assert "hotReload" not in data  # the chart's own key is not rendered
    assert data["upstream"]["api_key"] == "${OPENAI_API_KEY}"
    assert data["auth"]["hs_secret"] == "${GATEWAY_JWT_SECRET}"
    assert data["store"]["redis_url"] == "${REDIS_URL:-}"
    assert data["cache"]["redis_url"] == "${CACHE_REDIS_URL:-}"
    config = parse_config(yaml.safe_load(text), env=CONFIG_ENV)
    assert config.upstream.api_key.get_secret_value() == "sk-x"
    assert config.store.redis_url is None  # REDIS_URL unset: the embedded store
    assert config.cache.redis_url is None  # CACHE_REDIS_URL unset: the cache goes with the store
    assert config.server.port == 8080
    assert config.teams, "the default values should ship a sample team"


def test_configmap_ships_the_price_list_the_config_includes(chart: Any, tmp_path: Path) -> None:
    configmap = only(render(chart), "ConfigMap")["data"]
    shipped = (ROOT / "config" / "pricing.yaml").read_text()
    assert (CHART / "files" / "pricing.yaml").read_text() == shipped, (
        "helm/gateway/files/pricing.yaml must be a copy of config/pricing.yaml"
    )
    assert configmap["pricing.yaml"].rstrip("\n") == shipped.rstrip("\n")
    # Loaded as the pod does: both keys as files in one directory.
    for name, text in configmap.items():
        (tmp_path / name).write_text(text)
    config = load_config(tmp_path / "gateway.yaml", env=CONFIG_ENV)
    assert config.pricing.price_of("gpt-4o-mini") is not None


def test_configmap_with_redis_validates_with_the_gateway_loader(chart: Any) -> None:
    text = gateway_yaml(render(chart, {"redis": {"deploy": True}}))
    env = CONFIG_ENV | {"REDIS_URL": "redis://:pw@demo-gateway-redis.llm.svc:6379/0"}
    config = parse_config(yaml.safe_load(text), env=env)
    assert config.store.redis_url is not None


def test_no_config_checksum_with_hot_reload(chart: Any) -> None:
    docs = render(chart)
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    assert "checksum/config" not in annotations


def test_config_checksum_without_hot_reload_follows_the_config(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = only(render(chart, values), "Deployment")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    first = checksum({"config": {"hotReload": False}})
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert checksum({"config": {"hotReload": False}}) == first
    changed = {"config": {"hotReload": False, "logging": {"level": "DEBUG"}}}
    assert checksum(changed) != first


# --- terminationGracePeriodSeconds ----------------------------------------------------------------


def grace_period(chart: Any, values: dict[str, Any]) -> int:
    pod = only(render(chart, values), "Deployment")["spec"]["template"]["spec"]
    value: int = pod["terminationGracePeriodSeconds"]
    return value


def test_termination_grace_exceeds_shutdown_grace(chart: Any) -> None:
    defaults = chart.values
    shutdown = defaults["config"]["server"]["shutdown_grace_seconds"]
    pre_stop = defaults["preStopSleepSeconds"]
    assert grace_period(chart, {}) == pre_stop + shutdown + 15
    assert grace_period(chart, {}) > shutdown
    longer = {"config": {"server": {"shutdown_grace_seconds": 120.5}}, "preStopSleepSeconds": 0}
    assert grace_period(chart, longer) == 121 + 15


def test_explicit_termination_grace_is_used_when_long_enough(chart: Any) -> None:
    assert grace_period(chart, {"terminationGracePeriodSeconds": 300}) == 300


def test_termination_grace_not_above_shutdown_grace_fails(helm: ModuleType, chart: Any) -> None:
    message = render_error(helm, chart, {"terminationGracePeriodSeconds": 30})
    assert "terminationGracePeriodSeconds (30) must be greater than" in message
    assert "shutdown_grace_seconds (30)" in message


# --- values.schema.json ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCuont": 2}, "replicaCuont"),
        ({"image": {"tga": "1.0"}}, "tga"),
        ({"redis": {"deplyo": True}}, "deplyo"),
        ({"networkPolicy": {"enabled": True, "ingresFrom": []}}, "ingresFrom"),
        ({"config": {"upstrem": {}}}, "upstrem"),
        ({"service": {"port": "http"}}, "/service/port"),
        ({"config": {"server": {"port": "${GATEWAY_PORT:-8080}"}}}, "/config/server/port"),
        ({"secrets": {"jwtSecret": "too-short"}}, "/secrets/jwtSecret"),
        ({"redis": {"auth": {"password": "p@ss"}}}, "/redis/auth/password"),
        ({"redisCache": {"deplyo": True}}, "deplyo"),
        ({"redisCache": {"maxmemory": "lots"}}, "/redisCache/maxmemory"),
    ],
    ids=[
        "top",
        "image",
        "redis",
        "networkPolicy",
        "config-section",
        "type",
        "config-port",
        "short-jwt-secret",
        "url-unsafe-password",
        "redisCache",
        "cache-maxmemory",
    ],
)
def test_schema_rejects_typos_and_wrong_types(
    helm: ModuleType, chart: Any, values: dict[str, Any], where: str
) -> None:
    message = render_error(helm, chart, values)
    assert where in message, message


def test_schema_knows_every_gateway_config_section() -> None:
    # `config` mirrors GatewayConfig's sections (plus the chart's hotReload); a new section in
    # gateway/config.py must be added to values.schema.json, or the chart refuses it.
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = set(schema["properties"]["config"]["properties"])
    missing = set(GatewayConfig.model_fields) - sections
    assert not missing, f"add {sorted(missing)} to config in helm/gateway/values.schema.json"
    assert sections - set(GatewayConfig.model_fields) == {"hotReload"}


def test_values_yaml_comments_every_key() -> None:
    """Every key in values.yaml has a comment, except the fields of Kubernetes objects and lists
    whose parent key's comment describes them (probes, securityContext, resources, ...)."""
    passthrough = {
        "updateStrategy", "podSecurityContext", "securityContext", "resources",
        "livenessProbe", "readinessProbe", "hosts",
    }  # fmt: skip
    uncommented: list[str] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        key = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if key:
            indent, name = len(key.group(1)), key.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inside_passthrough = any(parent in passthrough for _, parent in stack)
            if not inside_passthrough and not previous.startswith("#") and " # " not in line:
                uncommented.append(f"line {number}: {name}")
            stack.append((indent, name))
        if stripped:
            previous = stripped
    assert not uncommented, uncommented


# --- optional resources ---------------------------------------------------------------------------


def test_all_optional_resources_render_valid_manifests(
    chart: Any, kubernetes_validate: ModuleType
) -> None:
    docs = render(chart, ALL_OPTIONAL)
    assert kinds(docs) == {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
        "StatefulSet",
    }
    assert_valid_kubernetes(kubernetes_validate, docs)
    # Autoscaling owns the replica count.
    assert "replicas" not in only(docs, "Deployment")["spec"]
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "no-service-account": {"serviceAccount": {"create": False}},
    "no-prestop": {"preStopSleepSeconds": 0},
    "digest": {"image": {"digest": "sha256:" + "ab" * 32}},
    "metrics-port": {"config": {"metrics": {"port": 9102}}, "serviceMonitor": {"enabled": True}},
    "redis-no-auth": {"redis": {"deploy": True, "auth": {"enabled": False}}},
    "existing-secret-redis-url": {"existingSecret": "creds", "redis": {"url": "redis://r:6379"}},
    "redis-cache-no-auth": {"redisCache": {"deploy": True, "auth": {"enabled": False}}},
    "existing-secret-cache-url": {"existingSecret": "c", "redisCache": {"url": "redis://c:6379"}},
    "ingress-no-host": {"ingress": {"enabled": True, "hosts": [{"paths": [{"path": "/v1"}]}]}},
    "overrides": {"fullnameOverride": "llm-gw", "nameOverride": "gw", "commonLabels": {"a": "b"}},
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_variants_render_valid_manifests(
    chart: Any, kubernetes_validate: ModuleType, values: dict[str, Any]
) -> None:
    assert_valid_kubernetes(kubernetes_validate, render(chart, values))


@pytest.mark.parametrize(
    ("budget", "expected"),
    [({}, {"maxUnavailable": 1}), ({"minAvailable": "50%"}, {"minAvailable": "50%"})],
    ids=["default", "minAvailable-wins"],
)
def test_pod_disruption_budget(
    chart: Any, budget: dict[str, Any], expected: dict[str, Any]
) -> None:
    docs = render(chart, {"podDisruptionBudget": {"enabled": True, **budget}})
    spec = only(docs, "PodDisruptionBudget")["spec"]
    assert spec == expected | {"selector": only(docs, "Deployment")["spec"]["selector"]}


def test_network_policy_allows_http_in_and_dns_redis_https_out(chart: Any) -> None:
    values = {"networkPolicy": {"enabled": True}, "redis": {"url": "redis://r:6379/0"}}
    policy = only(render(chart, values), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")}


def test_network_policy_for_the_chart_redis_admits_only_the_gateway(chart: Any) -> None:
    docs = render(chart, {"networkPolicy": {"enabled": True}, "redis": {"deploy": True}})
    redis_policy = only(docs, "NetworkPolicy", f"{FULLNAME}-redis")["spec"]
    (rule,) = redis_policy["ingress"]
    gateway_selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert rule["from"] == [{"podSelector": {"matchLabels": gateway_selector}}]
    gateway_policy = only(docs, "NetworkPolicy")["spec"]
    redis_selector = only(docs, "StatefulSet", f"{FULLNAME}-redis")["spec"]["selector"]
    assert {"podSelector": redis_selector} in [
        peer for rule in gateway_policy["egress"] for peer in rule.get("to", [])
    ]


def test_ingress_routes_to_the_http_port(chart: Any) -> None:
    ingress = only(render(chart, ALL_OPTIONAL), "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    (rule,) = ingress["rules"]
    assert rule["host"] == "gateway.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_service_monitor_scrapes_metrics_on_the_http_port(chart: Any) -> None:
    docs = render(chart, ALL_OPTIONAL)
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"] == only(docs, "Service")["spec"]["selector"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }


def test_prometheus_rule_embeds_files_alerts_yaml(chart: Any) -> None:
    rule = only(render(chart, ALL_OPTIONAL), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts_file = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts_file["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}, item
            assert item["alert"] and item["expr"].strip()
            assert item["labels"]["severity"] in {"critical", "warning", "info"}
            assert item["annotations"]["summary"]
            assert re.search(r"\bgateway_[a-z_]+", item["expr"]), item["expr"]


def test_separate_metrics_port_is_exposed_and_scraped(chart: Any) -> None:
    values: dict[str, Any] = {
        "config": {"metrics": {"port": 9102}},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
    }
    docs = render(chart, values)
    assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in container(docs)["ports"]
    service_ports = {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}
    assert service_ports["metrics"]["port"] == 9102
    assert service_ports["metrics"]["targetPort"] == "metrics"
    assert only(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    ingress_ports = only(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
    assert {"port": "metrics", "protocol": "TCP"} in ingress_ports
    parse_config(yaml.safe_load(gateway_yaml(docs)), env=CONFIG_ENV)


def test_prometheus_rule_appends_additional_groups(chart: Any) -> None:
    extra = {"name": "custom", "rules": [{"alert": "X", "expr": "vector(1)", "labels": {}}]}
    values = {"prometheusRule": {"enabled": True, "additionalGroups": [extra]}}
    groups = only(render(chart, values), "PrometheusRule")["spec"]["groups"]
    assert groups[-1] == extra and len(groups) > 1


def test_dashboards_configmap_is_labelled_for_the_grafana_sidecar(chart: Any) -> None:
    docs = render(chart, ALL_OPTIONAL)
    dashboards = only(docs, "ConfigMap", f"{FULLNAME}-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json"))
    assert shipped and sorted(dashboards["data"]) == shipped
    for name, text in dashboards["data"].items():
        assert json.loads(text)["uid"], name


def test_optional_resources_are_off_by_default(chart: Any) -> None:
    defaults = chart.values
    for key in ("autoscaling", "podDisruptionBudget", "networkPolicy", "ingress"):
        assert defaults[key]["enabled"] is False, key
    for key in ("serviceMonitor", "prometheusRule", "dashboards"):
        assert defaults[key]["enabled"] is False, key
    assert defaults["redis"]["deploy"] is False
    assert defaults["redisCache"]["deploy"] is False
    assert defaults["redisCache"]["url"] == ""


# --- Redis and secrets ----------------------------------------------------------------------------


def test_redis_deploy_renders_a_statefulset_and_points_redis_url_at_it(
    chart: Any, kubernetes_validate: ModuleType
) -> None:
    docs = render(chart, {"redis": {"deploy": True}})
    assert_valid_kubernetes(kubernetes_validate, docs)
    redis_name = f"{FULLNAME}-redis"
    statefulset = only(docs, "StatefulSet", redis_name)
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] == redis_name
    headless = only(docs, "Service", redis_name)["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    # The gateway's Service and Deployment must not select the Redis pod.
    gateway_selector = only(docs, "Service")["spec"]["selector"]
    redis_pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert not gateway_selector.items() <= redis_pod_labels.items()

    pod = statefulset["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["securityContext"]["runAsNonRoot"] is True
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    args = redis["args"]
    # Quota counters survive a restart and are never evicted (issue 13).
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]

    env = env_of(container(docs))
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "REDIS_PASSWORD",
    }
    names = [e["name"] for e in container(docs)["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")  # $(...) needs the order
    url = env["REDIS_URL"]["value"]
    assert url == f"redis://:$(REDIS_PASSWORD)@{redis_name}.{NAMESPACE}.svc:6379/0"
    assert "REDIS_PASSWORD" in only(docs, "Secret")["data"]


def test_redis_persistence_is_configurable(chart: Any, kubernetes_validate: ModuleType) -> None:
    name = f"{FULLNAME}-redis"
    docs = render(
        chart,
        {"redis": {"deploy": True, "persistence": {"size": "5Gi", "storageClass": "fast"}}},
    )
    assert_valid_kubernetes(kubernetes_validate, docs)
    (claim,) = only(docs, "StatefulSet", name)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    docs = render(chart, {"redis": {"deploy": True, "persistence": {"enabled": False}}})
    assert_valid_kubernetes(kubernetes_validate, docs)
    statefulset = only(docs, "StatefulSet", name)["spec"]
    assert "volumeClaimTemplates" not in statefulset
    assert {"name": "data", "emptyDir": {}} in statefulset["template"]["spec"]["volumes"]


def test_redis_deploy_without_auth(chart: Any) -> None:
    docs = render(chart, {"redis": {"deploy": True, "auth": {"enabled": False}}})
    env = env_of(container(docs))
    assert env["REDIS_URL"]["value"] == f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
    assert "REDIS_PASSWORD" not in env
    assert "--requirepass" not in container(docs, "StatefulSet", f"{FULLNAME}-redis")["args"]


def test_redis_url_and_redis_deploy_together_fail(helm: ModuleType, chart: Any) -> None:
    values = {"redis": {"deploy": True, "url": "redis://elsewhere:6379/0"}}
    assert "not both" in render_error(helm, chart, values)


def test_existing_secret_replaces_the_chart_secret(
    chart: Any, kubernetes_validate: ModuleType
) -> None:
    values = {
        "existingSecret": "gateway-credentials",
        "secretKeys": {"openaiApiKey": "openai-key", "jwtSecret": "jwt", "redisUrl": "redis"},
    }
    docs = render(chart, values)
    assert "Secret" not in kinds(docs)
    assert_valid_kubernetes(kubernetes_validate, docs)
    env = env_of(container(docs))
    expected = {"OPENAI_API_KEY": "openai-key", "GATEWAY_JWT_SECRET": "jwt"}
    for name, key in expected.items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "gateway-credentials", "key": key}
    # The Redis URL may or may not be in the existing Secret: missing means the embedded store.
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "gateway-credentials",
        "key": "redis",
        "optional": True,
    }


def test_existing_secret_with_the_chart_redis(chart: Any) -> None:
    values = {"existingSecret": "creds", "redis": {"deploy": True}}
    docs = render(chart, values)
    assert "Secret" not in kinds(docs)
    redis_env = env_of(container(docs, "StatefulSet", f"{FULLNAME}-redis"))
    ref = {"name": "creds", "key": "REDIS_PASSWORD"}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    assert env_of(container(docs))["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref


# --- the optional cache-only Redis (issue 13) ---------------------------------------------------

QUOTA_REDIS = f"{FULLNAME}-redis"
CACHE_REDIS = f"{FULLNAME}-redis-cache"


def redis_servers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workload name -> its redis-server container, for every Redis the chart renders."""
    found = {}
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for main in doc["spec"]["template"]["spec"]["containers"]:
                if main.get("command") == ["redis-server"]:
                    found[doc["metadata"]["name"]] = main
    return found


def arg(main: dict[str, Any], flag: str) -> str:
    args: list[str] = main["args"]
    assert args.count(flag) == 1, (flag, args)
    return args[args.index(flag) + 1]


def gateway_config(docs: list[dict[str, Any]], **env: str) -> GatewayConfig:
    return parse_config(yaml.safe_load(gateway_yaml(docs)), env=CONFIG_ENV | env)


def test_by_default_one_redis_serves_quotas_and_the_cache(chart: Any) -> None:
    docs = render(chart, {"redis": {"deploy": True}})
    assert set(redis_servers(docs)) == {QUOTA_REDIS}
    env = env_of(container(docs))
    assert "CACHE_REDIS_URL" not in env and "CACHE_REDIS_PASSWORD" not in env
    assert "CACHE_REDIS_PASSWORD" not in only(docs, "Secret")["data"]
    config = gateway_config(docs, REDIS_URL="redis://:pw@quota:6379/0")
    assert config.cache.redis_url is None
    assert cache_url(config) == "redis://:pw@quota:6379/0"  # the cache shares the quota Redis
    assert redis_servers(render(chart)) == {}  # and no Redis at all unless asked for


def test_redis_cache_deploy_renders_an_lru_redis_and_points_the_cache_at_it(
    chart: Any, kubernetes_validate: ModuleType
) -> None:
    docs = render(chart, {"redis": {"deploy": True}, "redisCache": {"deploy": True}})
    assert_valid_kubernetes(kubernetes_validate, docs)
    servers = redis_servers(docs)
    assert set(servers) == {QUOTA_REDIS, CACHE_REDIS}

    # The cache instance: a memory budget, LRU over all keys, nothing written to disk.
    cache = servers[CACHE_REDIS]
    assert arg(cache, "--maxmemory") == "200mb"
    assert arg(cache, "--maxmemory-policy") == "allkeys-lru"
    assert arg(cache, "--save") == ""
    assert arg(cache, "--appendonly") == "no"
    assert arg(cache, "--requirepass") == "$(REDIS_PASSWORD)"
    assert cache["securityContext"]["readOnlyRootFilesystem"] is True
    workload = only(docs, "Deployment", CACHE_REDIS)
    pod = workload["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert {"name": "data", "emptyDir": {"sizeLimit": "16Mi"}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is False
    assert workload["spec"]["strategy"] == {"type": "Recreate"}
    memory_limit = cache["resources"]["limits"]["memory"]
    assert memory_limit == "320Mi"  # above maxmemory: Redis needs room for buffers

    # The quota instance is unchanged: no eviction, AOF on its claim.
    quota = servers[QUOTA_REDIS]
    assert arg(quota, "--maxmemory-policy") == "noeviction"
    assert arg(quota, "--appendonly") == "yes"
    assert arg(quota, "--appendfsync") == "everysec"
    assert "--maxmemory" not in quota["args"]
    (claim,) = only(docs, "StatefulSet", QUOTA_REDIS)["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"

    # Its own Service, selecting only the cache pod.
    service = only(docs, "Service", CACHE_REDIS)["spec"]
    cache_pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= cache_pod_labels.items()
    assert service["ports"][0]["port"] == 6379
    quota_pod_labels = only(docs, "StatefulSet", QUOTA_REDIS)["spec"]["template"]["metadata"]
    for other in (only(docs, "Service", QUOTA_REDIS), only(docs, "Service")):
        assert not other["spec"]["selector"].items() <= cache_pod_labels.items()
    assert not service["selector"].items() <= quota_pod_labels["labels"].items()

    # The gateway's config reads the cache URL from the env the Deployment sets.
    env = env_of(container(docs))
    ref = {"name": FULLNAME, "key": "CACHE_REDIS_PASSWORD"}
    assert env["CACHE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    names = [e["name"] for e in container(docs)["env"]]
    assert names.index("CACHE_REDIS_PASSWORD") < names.index("CACHE_REDIS_URL")
    url = env["CACHE_REDIS_URL"]["value"]
    assert url == f"redis://:$(CACHE_REDIS_PASSWORD)@{CACHE_REDIS}.{NAMESPACE}.svc:6379/0"
    secret = {k: base64.b64decode(v).decode() for k, v in only(docs, "Secret")["data"].items()}
    assert len(secret["CACHE_REDIS_PASSWORD"]) == 32
    assert secret["CACHE_REDIS_PASSWORD"] != secret["REDIS_PASSWORD"]
    cache_env = env_of(container(docs, "Deployment", CACHE_REDIS))
    assert cache_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    resolved = {
        name: env[name]["value"]
        .replace("$(REDIS_PASSWORD)", "q")
        .replace("$(CACHE_REDIS_PASSWORD)", "c")
        for name in ("REDIS_URL", "CACHE_REDIS_URL")
    }
    config = gateway_config(docs, **resolved)
    assert config.store.redis_url is not None and config.cache.redis_url is not None
    assert config.store.redis_url.get_secret_value() == f"redis://:q@{QUOTA_REDIS}.llm.svc:6379/0"
    assert cache_url(config) == f"redis://:c@{CACHE_REDIS}.llm.svc:6379/0"


def test_redis_cache_memory_and_args_come_from_values(chart: Any) -> None:
    values = {
        "redisCache": {"deploy": True, "maxmemory": "2gb", "args": ["--maxmemory-samples", "10"]}
    }
    cache = redis_servers(render(chart, values))[CACHE_REDIS]
    assert arg(cache, "--maxmemory") == "2gb"
    assert cache["args"][-2:] == ["--maxmemory-samples", "10"]


def test_redis_cache_without_auth(chart: Any) -> None:
    docs = render(chart, {"redisCache": {"deploy": True, "auth": {"enabled": False}}})
    env = env_of(container(docs))
    assert env["CACHE_REDIS_URL"]["value"] == f"redis://{CACHE_REDIS}.{NAMESPACE}.svc:6379/0"
    assert "CACHE_REDIS_PASSWORD" not in env
    assert "--requirepass" not in redis_servers(docs)[CACHE_REDIS]["args"]
    assert "CACHE_REDIS_PASSWORD" not in only(docs, "Secret")["data"]


def test_external_cache_url_is_used_instead_of_a_chart_redis(chart: Any) -> None:
    docs = render(
        chart, {"redis": {"deploy": True}, "redisCache": {"url": "rediss://:pw@cache:6380/1"}}
    )
    assert set(redis_servers(docs)) == {QUOTA_REDIS}
    secret = only(docs, "Secret")
    assert base64.b64decode(secret["data"]["CACHE_REDIS_URL"]) == b"rediss://:pw@cache:6380/1"
    ref = env_of(container(docs))["CACHE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "CACHE_REDIS_URL"}
    config = gateway_config(
        docs, REDIS_URL="redis://q:6379/0", CACHE_REDIS_URL="rediss://:pw@cache:6380/1"
    )
    assert cache_url(config) == "rediss://:pw@cache:6380/1"


def test_cache_url_with_an_existing_secret(chart: Any) -> None:
    # Given in values: a plain env value; not given: optional in the Secret.
    docs = render(chart, {"existingSecret": "creds", "redisCache": {"url": "redis://c:6379/0"}})
    assert env_of(container(docs))["CACHE_REDIS_URL"]["value"] == "redis://c:6379/0"
    values = {"existingSecret": "creds", "secretKeys": {"cacheRedisUrl": "cache-url"}}
    ref = env_of(container(render(chart, values)))["CACHE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "creds", "key": "cache-url", "optional": True}


def test_redis_cache_url_and_deploy_together_fail(helm: ModuleType, chart: Any) -> None:
    values = {"redisCache": {"deploy": True, "url": "redis://elsewhere:6379/0"}}
    message = render_error(helm, chart, values)
    assert "redisCache.url" in message and "not both" in message


def test_network_policy_for_the_cache_redis_admits_only_the_gateway(chart: Any) -> None:
    values = {
        "networkPolicy": {"enabled": True},
        "redis": {"deploy": True},
        "redisCache": {"deploy": True},
    }
    docs = render(chart, values)
    (rule,) = only(docs, "NetworkPolicy", CACHE_REDIS)["spec"]["ingress"]
    gateway_selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert rule["from"] == [{"podSelector": {"matchLabels": gateway_selector}}]
    egress = only(docs, "NetworkPolicy")["spec"]["egress"]
    peers = [peer for item in egress for peer in item.get("to", [])]
    cache_selector = only(docs, "Deployment", CACHE_REDIS)["spec"]["selector"]
    assert {"podSelector": cache_selector} in peers
    # Both Redis in the chart: no egress to Redis ports anywhere else.
    assert all(
        item.get("to") for item in egress if {"port": 6379, "protocol": "TCP"} in item["ports"]
    )
    # An external cache next to the chart's quota Redis needs the open Redis ports again.
    values = {
        "networkPolicy": {"enabled": True},
        "redis": {"deploy": True},
        "redisCache": {"url": "redis://c:6379"},
    }
    egress = only(render(chart, values), "NetworkPolicy")["spec"]["egress"]
    assert {"ports": [{"port": 6379, "protocol": "TCP"}]} in egress


# --- NOTES.txt, the image and the versions --------------------------------------------------------


def test_notes_tell_how_to_mint_a_token_and_reach_the_service(chart: Any) -> None:
    notes = render_files(chart)["NOTES.txt"]
    assert (
        f"kubectl -n {NAMESPACE} exec deploy/{FULLNAME} -- gateway token --team research" in notes
    )
    assert f'base_url="http://{FULLNAME}.{NAMESPACE}.svc:8080/v1"' in notes


def test_chart_versions_match_the_package() -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart_meta["apiVersion"] == "v2"
    assert chart_meta["name"] == "gateway"
    assert chart_meta["appVersion"] == project["version"]


def test_dockerfile_matches_the_chart(chart: Any) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    defaults = chart.values
    assert "FROM ${PYTHON_IMAGE} AS builder" in dockerfile
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert not re.search(r"^HEALTHCHECK", dockerfile, re.MULTILINE)
    assert f"USER {defaults['securityContext']['runAsUser']}:" in dockerfile
    assert "--uid 10001" in dockerfile
    assert f"EXPOSE {defaults['config']['server']['port']}" in dockerfile
    assert 'ENTRYPOINT ["gateway"]' in dockerfile
    assert 'CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]' in dockerfile
    assert "PYTHONUNBUFFERED=1" in dockerfile
    assert defaults["image"]["repository"] == "ghcr.io/example/openai-team-gateway"
