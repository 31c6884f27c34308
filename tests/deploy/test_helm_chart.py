"""deploy/helm/tasklease: the Helm chart, linted and rendered by the real Helm engine.

helm_python (helm-python-sdk) is Helm v4's Go SDK as a shared library: ``lint`` is
``helm lint``, ``Chart.render`` is ``helm template`` (offline: ``lookup`` finds
nothing) and validates the values against values.schema.json first, as an install
does. Every rendered manifest is checked against the Kubernetes JSON schemas of a
fixed version (kubernetes_validate, strict: unknown fields are errors). The
Prometheus Operator's kinds (ServiceMonitor, PrometheusRule) are CRDs, absent from
those schemas: they are checked structurally here (apiVersion, kind, the spec fields
the operator requires).
"""

from __future__ import annotations

import base64
import copy
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tasklease"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DOC = ROOT / "docs" / "deploy-kubernetes.md"
KUBE_VERSION = "1.30.0"
RELEASE = "tl"
NAMESPACE = "jobs"
FULLNAME = f"{RELEASE}-tasklease"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}

Manifest = dict[str, Any]

EXTERNAL: dict[str, Any] = {"etcd": {"endpoints": "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379"}}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, recursively (``extra`` wins)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


TLS_AUTH = {
    "etcd": {
        "endpoints": ["https://etcd-a.example:2379", "https://etcd-b.example:2379"],
        "tls": {"existingSecret": "etcd-client-tls", "serverName": "etcd.example"},
        "auth": {"user": "tasklease", "existingSecret": "etcd-password", "passwordKey": "pw"},
    }
}
BUNDLED = {"etcd": {"bundled": {"enabled": True, "replicas": 3}}}
HPA = merged(EXTERNAL, {"worker": {"autoscaling": {"enabled": True, "metricSelector": {"queue": "default"}}}})
WEB_RO_INGRESS = merged(
    EXTERNAL,
    {
        "web": {
            "readOnly": True,
            "token": {"existingSecret": "dashboard-token", "key": "t"},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "tasks.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "tasks-tls", "hosts": ["tasks.example.com"]}],
            },
        }
    },
)
MONITORING = merged(
    EXTERNAL, {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
)
FULL = merged(
    EXTERNAL,
    {
        "tasklease": {"namespace": "billing", "logLevel": "debug", "logFormat": "text", "etcdTimeout": 8},
        "scheduler": {"balancer": "weighted", "leaseTtl": 15, "batchSize": 20},
        "worker": {
            "concurrency": 16,
            "queues": ["default", "images"],
            "tags": {"zone": "a", "gpu": "yes"},
            "imports": ["myapp.tasks", "myapp.more"],
            "paths": ["/app"],
            "weight": 2,
            "grace": 120,
            "allow": ["http"],
        },
    },
)

VARIANTS: dict[str, dict[str, Any]] = {
    "default": EXTERNAL,
    "tls-auth": TLS_AUTH,
    "bundled": BUNDLED,
    "bundled-single": {"etcd": {"bundled": {"enabled": True, "persistence": {"enabled": False}}}},
    "hpa": HPA,
    "web-ro-ingress": WEB_RO_INGRESS,
    "monitoring": MONITORING,
    "full": FULL,
}


@pytest.fixture(scope="module", autouse=True)
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Helm's cache/config/data directories in a temporary directory (offline work needs none, but never ~)."""
    home = tmp_path_factory.mktemp("helm-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            mp.setenv(var, str(home / var.lower()))
        yield


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    """The chart's objects for ``values`` (NOTES.txt left out), each a parsed manifest."""
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[Manifest] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return out["tasklease/templates/NOTES.txt"]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"{kind}/{name}: {len(found)} rendered ({[(d['kind'], d['metadata']['name']) for d in docs]})"
    )
    return found[0]


def kinds(docs: list[Manifest]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def pod_spec(doc: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def container(doc: Manifest) -> dict[str, Any]:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_of(doc: Manifest) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(doc).get("env", [])}


def arg_value(args: list[str], option: str) -> str:
    assert args.count(option) == 1, f"{option} in {args}"
    return args[args.index(option) + 1]


def deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    """The three tasklease Deployments by component."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"
    }


def mounted_file(doc: Manifest, path: str) -> tuple[str, str]:
    """(Secret name, key) behind the file ``path`` in ``doc``'s container; fails if not from a Secret."""
    mounts = container(doc)["volumeMounts"]
    volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
    for mount in mounts:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            assert mount.get("readOnly") is True, mount
            secret = volumes[mount["name"]].get("secret")
            assert secret is not None, f"{path} is not in a Secret volume: {volumes[mount['name']]}"
            items = {item["path"]: item["key"] for item in secret["items"]}
            return secret["secretName"], items[path[len(prefix) :]]
    raise AssertionError(f"{path} is in no mounted volume of {doc['metadata']['name']}")


# --- lint and schema ---------------------------------------------------------------------------


def test_lint_is_clean_with_the_real_engine() -> None:
    report = helm.lint(CHART, EXTERNAL, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; only the "icon is recommended" info may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_lints_clean(variant: str) -> None:
    report = helm.lint(CHART, VARIANTS[variant], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []


def test_lint_reports_a_schema_violation() -> None:
    report = helm.lint(CHART, merged(EXTERNAL, {"scheduler": {"balancer": "fastest"}}), strict=True)
    assert any("/scheduler/balancer" in e for e in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"scheduler": {"balancer": "fastest"}}, "/scheduler/balancer"),
        ({"worker": {"replicas": -1}}, "/worker/replicas"),
        ({"scheduler": {"replicas": "two"}}, "/scheduler/replicas"),
        ({"worker": {"concurrency": 0}}, "/worker/concurrency"),
        ({"worker": {"grace": -5}}, "/worker/grace"),
        ({"worker": {"allow": ["root"]}}, "/worker/allow"),
        ({"worker": {"queues": ["bad queue"]}}, "/worker/queues"),
        ({"tasklease": {"logFormat": "xml"}}, "/tasklease/logFormat"),
        ({"tasklease": {"logLevel": "verbose"}}, "/tasklease/logLevel"),
        ({"etcd": {"bundled": {"enabled": True, "replicas": 2}}}, "/etcd/bundled/replicas"),
        ({"etcd": {"endpoints": "etcd:2379"}}, "/etcd/endpoints"),
        # No value may carry a secret in plain text: there is no such key.
        ({"web": {"token": {"value": "s3cr3t-s3cr3t-s3cr3t"}}}, "/web/token"),
        ({"etcd": {"auth": {"password": "hunter2"}}}, "/etcd/auth"),
    ],
)
def test_the_schema_refuses_bad_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(merged(EXTERNAL, values), name=RELEASE, namespace=NAMESPACE)
    assert where in str(refused.value)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(merged(EXTERNAL, values))


def test_default_values_pass_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(chart.values)
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.metadata["appVersion"] == "0.1.0"


def test_missing_endpoints_fail_with_a_clear_message(chart: helm.Chart) -> None:
    with pytest.raises(
        helm.HelmRenderError, match=r"etcd\.endpoints is required.*etcd\.bundled\.enabled=true"
    ):
        chart.render({}, name=RELEASE, namespace=NAMESPACE)


def test_endpoints_and_bundled_etcd_are_exclusive(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="exclusive"):
        render(chart, merged(EXTERNAL, BUNDLED))


def test_password_secret_needs_a_user(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"etcd\.auth\.user is empty"):
        render(chart, merged(EXTERNAL, {"etcd": {"auth": {"existingSecret": "pw"}}}))


# --- every manifest against the Kubernetes schemas ---------------------------------------------


def check_crd_structure(doc: Manifest) -> None:
    """ServiceMonitor / PrometheusRule: CRDs, not in the Kubernetes schemas; the fields the operator needs."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert isinstance(spec["selector"], dict) and spec["selector"]
        assert spec["endpoints"] and all(isinstance(e["port"], str) for e in spec["endpoints"])
    else:
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert isinstance(group["name"], str)
            for rule in group["rules"]:
                assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_valid_kubernetes(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    assert len(docs) >= 7
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_crd_structure(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{variant}: {doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tasklease"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        if doc["kind"] in WORKLOAD_KINDS:
            selector = doc["spec"]["selector"]["matchLabels"]
            template_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template_labels.items()


def test_default_objects(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    assert kinds(docs) == {
        ("ServiceAccount", FULLNAME),
        ("Deployment", f"{FULLNAME}-scheduler"),
        ("Deployment", f"{FULLNAME}-worker"),
        ("Deployment", f"{FULLNAME}-web"),
        ("PodDisruptionBudget", f"{FULLNAME}-scheduler"),
        ("Service", f"{FULLNAME}-web"),
        ("Service", f"{FULLNAME}-scheduler-metrics"),
        ("Service", f"{FULLNAME}-worker-metrics"),
        ("Secret", f"{FULLNAME}-web-token"),
    }
    for doc in deployments(docs).values():
        assert env_of(doc)["TASKLEASE_ETCD"]["value"] == EXTERNAL["etcd"]["endpoints"]


# --- processes: arguments, probes, grace --------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "bundled", "web-ro-ingress"])
def test_probes_of_the_three_processes(chart: helm.Chart, variant: str) -> None:
    expected = {"scheduler": 9100, "worker": 9100, "web": 8080}
    found = deployments(render(chart, VARIANTS[variant]))
    assert set(found) == set(expected)
    for component, port in expected.items():
        c = container(found[component])
        assert c["args"][0] == component
        assert "command" not in c  # the image's ENTRYPOINT is `tini -g -- tasklease`
        assert arg_value(c["args"], "--http") == f"0.0.0.0:{port}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe"):
            probe_port = c[probe]["httpGet"]["port"]
            assert ports[probe_port] == port, f"{component} {probe} on {probe_port}"


def test_worker_termination_grace_covers_its_drain(chart: helm.Chart) -> None:
    for values, expected in [
        (EXTERNAL, 45),
        (merged(EXTERNAL, {"worker": {"grace": 120}}), 135),
        (merged(EXTERNAL, {"worker": {"grace": 7.5, "terminationGraceMargin": 0}}), 8),
        (merged(EXTERNAL, {"worker": {"grace": 120, "terminationGracePeriodSeconds": 300}}), 300),
        (merged(EXTERNAL, {"worker": {"grace": 60, "terminationGracePeriodSeconds": 60}}), 60),
    ]:
        worker = deployments(render(chart, values))["worker"]
        period = pod_spec(worker)["terminationGracePeriodSeconds"]
        grace = float(arg_value(container(worker)["args"], "--grace"))
        assert period == expected
        assert period >= grace


def test_a_termination_grace_below_the_drain_is_refused(chart: helm.Chart) -> None:
    values = merged(EXTERNAL, {"worker": {"grace": 60, "terminationGracePeriodSeconds": 30}})
    with pytest.raises(
        helm.HelmRenderError, match=r"terminationGracePeriodSeconds \(30\) is below worker\.grace \(60\)"
    ):
        render(chart, values)


def test_scheduler_deployment_and_its_disruption_budget(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    scheduler = find(docs, "Deployment", f"{FULLNAME}-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    args = container(scheduler)["args"]
    assert arg_value(args, "--id") == "$(POD_NAME)"
    assert env_of(scheduler)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert arg_value(args, "--balancer") == "least_load"
    pdb = find(docs, "PodDisruptionBudget", f"{FULLNAME}-scheduler")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == scheduler["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "scheduler"
    # The schedulers prefer different nodes, unless the values give an affinity.
    [term] = pod_spec(scheduler)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == scheduler["spec"]["selector"]["matchLabels"]
    )
    zone: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    custom = deployments(render(chart, merged(EXTERNAL, {"scheduler": {"affinity": zone}})))["scheduler"]
    assert pod_spec(custom)["affinity"] == zone


def test_options_reach_the_command_lines(chart: helm.Chart) -> None:
    found = deployments(render(chart, FULL))
    sched = container(found["scheduler"])["args"]
    assert (
        arg_value(sched, "--balancer"),
        arg_value(sched, "--lease-ttl"),
        arg_value(sched, "--batch-size"),
    ) == (
        "weighted",
        "15",
        "20",
    )
    worker = container(found["worker"])["args"]
    assert arg_value(worker, "--id") == "$(POD_NAME)"
    assert arg_value(worker, "--concurrency") == "16"
    assert arg_value(worker, "--queues") == "default,images"
    assert sorted(arg_value(worker, "--tags").split(",")) == ["gpu=yes", "zone=a"]
    assert [worker[i + 1] for i, a in enumerate(worker) if a == "--import"] == ["myapp.tasks", "myapp.more"]
    assert arg_value(worker, "--path") == "/app"
    assert arg_value(worker, "--weight") == "2"
    assert arg_value(worker, "--grace") == "120"
    assert arg_value(worker, "--allow") == "http"
    for component, doc in found.items():
        assert arg_value(container(doc)["args"], "--log-format") == "text", component
        env = env_of(doc)
        assert env["TASKLEASE_NAMESPACE"]["value"] == "billing"
        assert env["TASKLEASE_LOG_LEVEL"]["value"] == "debug"
        assert env["TASKLEASE_ETCD_TIMEOUT"]["value"] == "8"
    # Security-sensitive executors only when asked.
    default_worker = container(deployments(render(chart, EXTERNAL))["worker"])["args"]
    assert "--allow" not in default_worker
    assert "--import" not in default_worker


# --- secrets ------------------------------------------------------------------------------------

SECRET_ENV = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)


def assert_no_literal_secrets(docs: list[Manifest], secret_values: list[str]) -> None:
    """No env var of a workload holds a secret, no ConfigMap holds one, no arg carries one."""
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for c in pod_spec(doc)["containers"]:
            assert "--token" not in c.get("args", []) and "--etcd-password" not in c.get("args", [])
            for e in c.get("env", []):
                if SECRET_ENV.search(e["name"]) and not e["name"].endswith("_FILE"):
                    assert "value" not in e, f"{doc['metadata']['name']}: {e['name']} is a literal"
                    assert "secretKeyRef" in e["valueFrom"], e
            text = yaml.safe_dump(doc)
            for secret in secret_values:
                assert secret not in text


def test_generated_token_is_a_secret_reference(chart: helm.Chart) -> None:
    docs = render(chart, EXTERNAL)
    secret = find(docs, "Secret", f"{FULLNAME}-web-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    web = deployments(docs)["web"]
    ref = env_of(web)["TASKLEASE_WEB_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{FULLNAME}-web-token", "key": "token"}
    assert_no_literal_secrets(docs, [token, secret["data"]["token"]])
    text = notes(chart, EXTERNAL)
    assert f"get secret {FULLNAME}-web-token" in text
    assert "port-forward service/tl-tasklease-web 8080:8080" in text


def test_existing_token_secret_is_referenced_not_copied(chart: helm.Chart) -> None:
    docs = render(chart, WEB_RO_INGRESS)
    assert not [d for d in docs if d["kind"] == "Secret"]
    web = deployments(docs)["web"]
    ref = env_of(web)["TASKLEASE_WEB_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "dashboard-token", "key": "t"}
    assert_no_literal_secrets(docs, [])
    assert 'Secret "dashboard-token", key "t"' in notes(chart, WEB_RO_INGRESS).replace("\n", " ")


def test_etcd_tls_and_auth_come_from_secret_files(chart: helm.Chart) -> None:
    docs = render(chart, TLS_AUTH)
    assert_no_literal_secrets(docs, [])
    for component, doc in deployments(docs).items():
        env = env_of(doc)
        assert env["TASKLEASE_ETCD"]["value"] == "https://etcd-a.example:2379,https://etcd-b.example:2379"
        assert env["TASKLEASE_ETCD_USER"]["value"] == "tasklease"
        assert env["TASKLEASE_ETCD_TLS_SERVER_NAME"]["value"] == "etcd.example"
        assert "TASKLEASE_ETCD_PASSWORD" not in env, component
        assert mounted_file(doc, env["TASKLEASE_ETCD_PASSWORD_FILE"]["value"]) == ("etcd-password", "pw")
        assert mounted_file(doc, env["TASKLEASE_ETCD_CA"]["value"]) == ("etcd-client-tls", "ca.crt")
        assert mounted_file(doc, env["TASKLEASE_ETCD_CERT"]["value"]) == ("etcd-client-tls", "tls.crt")
        assert mounted_file(doc, env["TASKLEASE_ETCD_KEY"]["value"]) == ("etcd-client-tls", "tls.key")
    # Server-only TLS: a CA, no client certificate.
    ca_only = merged(TLS_AUTH, {"etcd": {"tls": {"certKey": "", "keyKey": ""}}})
    env = env_of(deployments(render(chart, ca_only))["worker"])
    assert "TASKLEASE_ETCD_CA" in env and "TASKLEASE_ETCD_CERT" not in env and "TASKLEASE_ETCD_KEY" not in env
    # Nothing of that without the Secrets.
    env = env_of(deployments(render(chart, EXTERNAL))["worker"])
    assert not {k for k in env if k.startswith("TASKLEASE_ETCD_")}


# --- pod security -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default", "bundled", "tls-auth"])
def test_pods_run_non_root_and_locked_down(chart: helm.Chart, variant: str) -> None:
    docs = render(chart, VARIANTS[variant])
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(workloads) == (4 if variant == "bundled" else 3)
    for doc in workloads:
        spec = pod_spec(doc)
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
        if doc["kind"] == "Deployment":
            c = container(doc)
            assert c["image"] == "tasklease:0.1.0"
            assert c["imagePullPolicy"] == "IfNotPresent"
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes[tmp[0]["name"]] == {"name": tmp[0]["name"], "emptyDir": {}}


# --- bundled etcd -------------------------------------------------------------------------------


def test_bundled_etcd(chart: helm.Chart) -> None:
    docs = render(chart, BUNDLED)
    sts = find(docs, "StatefulSet", f"{FULLNAME}-etcd")
    headless = find(docs, "Service", f"{FULLNAME}-etcd-headless")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    c = container(sts)
    assert c["image"] == "gcr.io/etcd-development/etcd:v3.5.27"
    args = dict(a.split("=", 1) for a in c["args"])
    assert args["--auto-compaction-retention"] == "1h"
    assert args["--quota-backend-bytes"] == "2147483648"
    domain = f"{FULLNAME}-etcd-headless.{NAMESPACE}.svc.cluster.local"
    members = [f"{FULLNAME}-etcd-{i}" for i in range(3)]
    assert args["--initial-cluster"] == ",".join(f"{m}=http://{m}.{domain}:2380" for m in members)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"client": 2379, "peer": 2380, "metrics": 2381}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"].startswith("/health")
        assert c[probe]["httpGet"]["port"] == "metrics"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/run/etcd"} in c["volumeMounts"]
    endpoints = ",".join(f"http://{m}.{domain}:2379" for m in members)
    for doc in deployments(docs).values():
        assert env_of(doc)["TASKLEASE_ETCD"]["value"] == endpoints


def test_bundled_single_member_without_persistence(chart: helm.Chart) -> None:
    docs = render(chart, VARIANTS["bundled-single"])
    sts = find(docs, "StatefulSet", f"{FULLNAME}-etcd")
    assert sts["spec"]["replicas"] == 1
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(sts)["volumes"]
    worker = deployments(docs)["worker"]
    host = f"{FULLNAME}-etcd-0.{FULLNAME}-etcd-headless.{NAMESPACE}.svc.cluster.local"
    assert env_of(worker)["TASKLEASE_ETCD"]["value"] == f"http://{host}:2379"


# --- HPA, web, monitoring ----------------------------------------------------------------------


def test_hpa_scales_the_workers_on_the_queue_depth(chart: helm.Chart) -> None:
    docs = render(chart, HPA)
    worker = find(docs, "Deployment", f"{FULLNAME}-worker")
    assert "replicas" not in worker["spec"]  # the HPA owns it
    hpa = find(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "tasklease_queue_depth",
        "selector": {"matchLabels": {"queue": "default"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    assert not [d for d in render(chart, EXTERNAL) if d["kind"] == "HorizontalPodAutoscaler"]


def test_read_only_web_behind_an_ingress(chart: helm.Chart) -> None:
    docs = render(chart, WEB_RO_INGRESS)
    web = deployments(docs)["web"]
    assert "--read-only" in container(web)["args"]
    service = find(docs, "Service", f"{FULLNAME}-web")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    ingress = find(docs, "Ingress", f"{FULLNAME}-web")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["tasks.example.com"], "secretName": "tasks-tls"}]
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "tasks.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": service_port["name"]}}
    assert "https://tasks.example.com/" in notes(chart, WEB_RO_INGRESS)
    default_web = deployments(render(chart, EXTERNAL))["web"]
    assert "--read-only" not in container(default_web)["args"]
    assert "FORWARDED_ALLOW_IPS" not in {e["name"] for e in container(default_web)["env"]}


def test_web_behind_an_https_ingress_trusts_the_proxy_it_is_told(chart: helm.Chart) -> None:
    values = merged(
        WEB_RO_INGRESS, {"web": {"readOnly": False, "forwardedAllowIps": "10.42.0.0/16,10.43.0.1"}}
    )
    env = {e["name"]: e for e in container(deployments(render(chart, values))["web"])["env"]}
    assert env["FORWARDED_ALLOW_IPS"] == {"name": "FORWARDED_ALLOW_IPS", "value": "10.42.0.0/16,10.43.0.1"}
    with pytest.raises(helm.HelmValuesError, match="/web/forwardedAllowIps"):
        chart.render(
            merged(values, {"web": {"forwardedAllowIps": "$(rm -rf /)"}}), name=RELEASE, namespace=NAMESPACE
        )


def test_web_can_be_left_out(chart: helm.Chart) -> None:
    docs = render(chart, merged(EXTERNAL, {"web": {"enabled": False}}))
    assert not [d for d in docs if d["metadata"]["labels"]["app.kubernetes.io/component"] == "web"]


def test_service_monitor_scrapes_schedulers_and_workers(chart: helm.Chart) -> None:
    docs = render(chart, MONITORING)
    monitor = find(docs, "ServiceMonitor", FULLNAME)
    check_crd_structure(monitor)
    selector = monitor["spec"]["selector"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selected = []
    for service in (d for d in docs if d["kind"] == "Service"):
        labels = service["metadata"]["labels"]
        if selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        ):
            selected.append(labels["app.kubernetes.io/component"])
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            assert service["spec"]["ports"][0]["port"] == 9100
    assert sorted(selected) == ["scheduler", "worker"]


def test_prometheus_rule_carries_the_alerts_of_deploy_prometheus(chart: helm.Chart) -> None:
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes()
    docs = render(chart, MONITORING)
    rule = find(docs, "PrometheusRule", FULLNAME)
    check_crd_structure(rule)
    original = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"] == original["groups"]
    # The annotations' templates reach Prometheus untouched (Helm did not expand them).
    first = rule["spec"]["groups"][0]["rules"][0]
    assert "{{ $value }}" in first["annotations"]["description"]


# --- the documentation's commands ----------------------------------------------------------------


def doc_set_expressions(doc: Path = DOC) -> list[str]:
    """Every ``--set EXPR`` of a document (docs/deploy-kubernetes.md), shell quotes removed."""
    text = doc.read_text().replace("\\\n", " ")  # a command continued on the next line
    found = re.findall(r"--set ('[^']*'|[^\s`]+)", text)
    return [shlex.split(e)[0] for e in found]


@pytest.mark.parametrize("doc", ["docs/deploy.md", "README.md"])
def test_the_other_docs_set_only_values_the_chart_has(chart: helm.Chart, doc: str) -> None:
    expressions = doc_set_expressions(ROOT / doc)
    assert expressions, doc
    values: dict[str, Any] = {}
    for expression in expressions:
        parsed = helm.parse_set_string(expression)
        node: Any = parsed
        default: Any = chart.values
        path: list[str] = []
        while isinstance(node, dict):
            [(key, node)] = node.items()
            path.append(key)
            assert isinstance(default, dict) and key in default, f"{doc}: {expression}: no {'.'.join(path)}"
            default = default[key]
        values = merged(values, parsed)
    assert values["etcd"]["endpoints"].startswith("https://"), values
    assert find(render(chart, values), "Deployment", f"{FULLNAME}-worker")


def test_the_docs_set_only_values_the_chart_has(chart: helm.Chart) -> None:
    expressions = doc_set_expressions()
    assert len(expressions) >= 15
    defaults = chart.values
    values: dict[str, Any] = {}
    for expression in expressions:
        parsed = helm.parse_set_string(expression)
        node: Any = parsed
        default: Any = defaults
        path = []
        while isinstance(node, dict):
            [(key, node)] = node.items()
            path.append(key)
            assert isinstance(default, dict), f"{expression}: {'.'.join(path[:-1])} takes no keys"
            if key not in default:
                assert default == {}, f"{expression}: no value {'.'.join(path)} in values.yaml"
                break
            default = default[key]
        values = merged(values, parsed)
    assert (
        values["etcd"]["endpoints"]
        == "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379,http://etcd-2.etcd:2379"
    )
    # All of them at once (the bundled etcd aside) make a valid release.
    values["etcd"]["bundled"]["enabled"] = False
    values["etcd"]["bundled"]["replicas"] = 1
    docs = render(chart, values)
    assert find(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-worker")
    assert container(deployments(docs)["worker"])["image"] == "registry.example.com/myapp-tasks:1.1"
