"""The Helm chart (``helm/otaudit``) and the image it runs, checked offline and then run.

- every values file in ``helm/otaudit/ci/`` renders, lints clean and validates, strictly
  (an unknown field fails), against the Kubernetes 1.31 schemas;
- each shape has its essentials: ports and appProtocol, probes, the security context,
  secrets only through ``secretKeyRef``, a sidecar on the loopback, a native sidecar as an
  init container with ``restartPolicy: Always``, HPA, PDB and Ingress only when asked for,
  a termination grace longer than the collector's drain, a config checksum that follows
  the configuration;
- values with a typo or a wrong type are refused with the schema's message, naming the key;
  values that cannot work are refused with a message saying what to do;
- the collector starts with the configuration the chart renders (and the arguments and
  environment of the rendered container) and stores what a real OTLP exporter sends it;
- the Dockerfile is multi-stage, runs ``otaudit`` as a non-root user, and is the image
  the chart names.

Rendering is in-process (helm-python-sdk, Helm v4 through its C library): no helm
binary, no cluster.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import requests
import yaml
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from support import REPO, CollectorProcess, good_attributes, rows
from test_ingest_clients import emit_with_stock_sdk

import otaudit_collector
from otaudit_collector.config import load_settings

CHART = REPO / "helm" / "otaudit"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBERNETES = "1.31.0"
RELEASE = "otaudit"
NAMESPACE = "audit"
CONFIG_PATH = "/etc/otaudit/otaudit.yaml"
CATALOGS_PATH = "/etc/otaudit/catalogs"
COLLECTOR_SCHEMA = REPO / "collector" / "otaudit_collector" / "config" / "schema.json"
PEPPER = "a-pepper-of-24-characters"
MINIMAL: dict[str, Any] = {"database": {"url": "postgresql://otaudit@db:5432/otaudit"}, "auth": {"tokenPepper": PEPPER}}

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def ci_values(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8"))
    return loaded


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_files(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def render(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    """Every Kubernetes object the chart renders with ``values`` (NOTES.txt left out)."""
    manifests: list[Manifest] = []
    for path, text in sorted(render_files(chart, values).items()):
        if path.endswith(".yaml"):
            manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def otaudit_container(manifests: list[Manifest]) -> dict[str, Any]:
    """The collector's container, wherever it is: a Deployment's container, a sidecar, a native sidecar."""
    spec = pod_spec(manifests)
    candidates: list[dict[str, Any]] = spec.get("initContainers", []) + spec["containers"]
    found = [c for c in candidates if str(c["image"]).startswith("ghcr.io/otaudit/otaudit:")]
    assert len(found) == 1, found
    return found[0]


def rendered_config(manifests: list[Manifest]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(manifests, "ConfigMap", f"{RELEASE}-config")["data"]["otaudit.yaml"])
    return config


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_data(manifests: list[Manifest], name: str) -> dict[str, str]:
    secret = one(manifests, "Secret", name)
    return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}


def grace_seconds(config: dict[str, Any]) -> float:
    return float(config.get("shutdown", {}).get("grace_seconds", 25))


# -- every values file: render, lint, validate ---------------------------------------------


def test_chart_metadata_follows_the_collector() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert meta["apiVersion"] == "v2" and meta["name"] == "otaudit"
    assert meta["appVersion"] == otaudit_collector.__version__
    assert {p.name for p in CI_VALUES} >= {
        "deployment-minimal.yaml",
        "deployment-hpa-pdb-ingress.yaml",
        "sidecar.yaml",
        "native-sidecar.yaml",
    }


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_values_file_renders_lints_and_validates(chart: helm.Chart, path: Path) -> None:
    values = ci_values(path.name)
    manifests = render(chart, values)
    assert manifests
    for manifest in manifests:
        where = f"{path.name}: {manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not valid for Kubernetes {KUBERNETES}: {'.'.join(map(str, exc.path))}: {exc.message}")
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "otaudit", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/version"] == otaudit_collector.__version__, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert manifest["metadata"]["namespace"] == NAMESPACE, where
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_rendered_configuration_is_one_the_collector_accepts(chart: helm.Chart, path: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "otaudit.yaml"
    config_file.write_text(one(render(chart, ci_values(path.name)), "ConfigMap", f"{RELEASE}-config")["data"]["otaudit.yaml"])
    settings = load_settings(config_file, environ={})  # the collector's own schema check; raises ConfigError
    assert settings.get("database", "url") is None  # never in the ConfigMap: from the Secret's environment variable
    assert settings.get("auth", "token_pepper") is None


# -- mode: deployment ------------------------------------------------------------------------


def test_deployment_essentials(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("deployment-minimal.yaml"))
    assert kinds(manifests) == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    container = otaudit_container(manifests)
    spec = pod_spec(manifests)
    config = rendered_config(manifests)

    service = one(manifests, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: (p["port"], p.get("appProtocol")) for n, p in ports.items()} == {
        "otlp": (4317, "grpc"),
        "otlp-http": (4318, "http"),
        "api": (4319, "http"),
    }
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {"otlp": 4317, "otlp-http": 4318, "api": 4319}
    assert {p["targetPort"] for p in ports.values()} == set(container_ports)
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # What the ports say, the collector is told: every interface, the same ports.
    assert config["listen"] == {
        "host": "0.0.0.0",
        "grpc_port": 4317,
        "http_port": 4318,
        "api_host": "0.0.0.0",
        "api_port": 4319,
        "workers": 1,
    }

    assert container["image"] == f"ghcr.io/otaudit/otaudit:{otaudit_collector.__version__}"
    assert container["args"] == ["serve", "--config", CONFIG_PATH]
    assert "command" not in container  # the image's ENTRYPOINT is otaudit
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[CONFIG_PATH]["subPath"] == "otaudit.yaml"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[CONFIG_PATH]["name"]]["configMap"]["name"] == f"{RELEASE}-config"

    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # the only writable place
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]

    # The secrets: only through secretKeyRef, from the Secret the chart made, never in the ConfigMap.
    env = env_of(container)
    assert env["OTAUDIT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": RELEASE, "key": "database-url"}
    assert env["OTAUDIT_TOKEN_PEPPER"]["valueFrom"]["secretKeyRef"] == {"name": RELEASE, "key": "token-pepper"}
    assert env["OTAUDIT_SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == {"name": RELEASE, "key": "signing-key"}
    assert env["OTAUDIT_DATABASE_READ_URL"]["valueFrom"]["secretKeyRef"] == {"name": RELEASE, "key": "database-read-url"}
    assert env["OTAUDIT_CONFIG"]["value"] == CONFIG_PATH  # so that `kubectl exec ... otaudit token create` finds it
    values = ci_values("deployment-minimal.yaml")
    assert secret_data(manifests, RELEASE) == {
        "database-url": values["database"]["url"],
        "database-read-url": values["database"]["readUrl"],
        "token-pepper": values["auth"]["tokenPepper"],
        "signing-key": values["integrity"]["signingKey"],
    }
    configmap_text = one(manifests, "ConfigMap", f"{RELEASE}-config")["data"]["otaudit.yaml"]
    assert values["auth"]["tokenPepper"] not in configmap_text and "change-me@" not in configmap_text
    assert values["integrity"]["signingKey"] not in configmap_text

    grace = spec["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", "5"]
    assert grace == 5 + 25 + 5 and grace > int(pre_stop[1]) + grace_seconds(config)


def test_hpa_pdb_ingress_existing_secret_and_catalogs(chart: helm.Chart) -> None:
    values = ci_values("deployment-hpa-pdb-ingress.yaml")
    manifests = render(chart, values)
    assert kinds(manifests) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]  # no Secret: it exists
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]} == {
        "cpu": 60,
        "memory": 80,
    }
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ingress = one(manifests, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(manifests, "Service")["metadata"]["name"], "port": {"name": "api"}}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "audit-example-com-tls", "hosts": ["audit.example.com"]}]

    container = otaudit_container(manifests)
    assert container["image"] == f"ghcr.io/otaudit/otaudit:{otaudit_collector.__version__}@{values['image']['digest']}"
    env = env_of(container)
    assert env["OTAUDIT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "otaudit-secrets", "key": "url"}
    assert env["OTAUDIT_TOKEN_PEPPER"]["valueFrom"]["secretKeyRef"] == {"name": "otaudit-secrets", "key": "pepper"}
    assert env["OTAUDIT_SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "otaudit-secrets", "key": "log-key"}
    assert env["OTAUDIT_DATABASE_READ_URL"]["valueFrom"]["secretKeyRef"] == {"name": "otaudit-secrets", "key": "replica-url"}

    config = rendered_config(manifests)
    assert config["catalogs"]["dirs"] == [CATALOGS_PATH]
    assert config["catalogs"]["packs"] == ["licensing"] and config["auth"]["require_ingest_token"] is True
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == CATALOGS_PATH)
    volume = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "company-catalogs"
    # shutdown.grace_seconds 40: the pod's grace grows with it.
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 5 + 40 + 5


def test_container_ports_follow_the_configured_listen_ports(chart: helm.Chart) -> None:
    manifests = render(chart, merged(MINIMAL, {"config": {"listen": {"grpc_port": 14317, "api_port": 14319}}}))
    container = otaudit_container(manifests)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"otlp": 14317, "otlp-http": 4318, "api": 14319}
    # The Service keeps its ports and follows the container's by name.
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in one(manifests, "Service")["spec"]["ports"]}
    assert service_ports == {"otlp": (4317, "otlp"), "otlp-http": (4318, "otlp-http"), "api": (4319, "api")}


def test_hpa_pdb_and_ingress_only_when_enabled(chart: helm.Chart) -> None:
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"} & set(kinds(render(chart, MINIMAL)))
    for key, kind in (
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("podDisruptionBudget", "PodDisruptionBudget"),
        ("ingress", "Ingress"),
    ):
        assert kind in kinds(render(chart, merged(MINIMAL, {key: {"enabled": True}}))), kind
        # Never in a sidecar: the service's own pod is what scales there.
        sidecar = merged(MINIMAL, {"mode": "sidecar", key: {"enabled": True}})
        assert kind not in kinds(render(chart, sidecar)), kind


def test_checksum_annotation_follows_the_configuration(chart: helm.Chart) -> None:
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        files = render_files(chart, values)
        deployment = yaml.safe_load(files["otaudit/templates/deployment.yaml"])
        found: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        configmap = files["otaudit/templates/configmap.yaml"].strip()
        assert found["checksum/config"] == hashlib.sha256(configmap.encode()).hexdigest()  # of the rendered ConfigMap
        return found

    before = annotations(MINIMAL)
    assert annotations(MINIMAL) == before  # stable: the same values do not roll the pods
    changed = annotations(merged(MINIMAL, {"config": {"ingest": {"max_concurrent_requests": 32}}}))
    assert changed["checksum/config"] != before["checksum/config"]
    assert changed["checksum/secret"] == before["checksum/secret"]
    rotated = annotations(merged(MINIMAL, {"auth": {"tokenPepper": PEPPER + "-rotated"}}))
    assert rotated["checksum/secret"] != before["checksum/secret"]
    assert rotated["checksum/config"] == before["checksum/config"]
    existing = annotations({"existingSecret": {"name": "mine"}})
    assert "checksum/secret" not in existing  # the chart cannot see an existing Secret
    assert {k: v for k, v in before.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "4319",
        "prometheus.io/path": "/metrics",
    }
    moved = annotations(merged(MINIMAL, {"config": {"listen": {"api_port": 9464}}}))
    assert moved["prometheus.io/port"] == "9464", "the port scraped is the API port the collector listens on"
    assert not any(
        k.startswith("prometheus.io/") for k in annotations(merged(MINIMAL, {"metrics": {"scrapeAnnotations": False}}))
    )


def test_termination_grace_always_exceeds_the_drain(chart: helm.Chart) -> None:
    for grace in (1, 25, 42.5, 120):
        manifests = render(chart, merged(MINIMAL, {"config": {"shutdown": {"grace_seconds": grace}}}))
        assert pod_spec(manifests)["terminationGracePeriodSeconds"] > grace + 5  # preStop sleep 5, then the drain
    explicit = render(chart, merged(MINIMAL, {"terminationGracePeriodSeconds": 90}))
    assert pod_spec(explicit)["terminationGracePeriodSeconds"] == 90


# -- mode: sidecar ---------------------------------------------------------------------------


def test_sidecar_listens_on_the_loopback(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("sidecar.yaml"))
    assert kinds(manifests) == ["ConfigMap", "Deployment", "Secret"]  # the example Deployment; no Service
    spec = pod_spec(manifests)
    assert "initContainers" not in spec
    names = [c["name"] for c in spec["containers"]]
    assert names == ["app", "otaudit"]
    config = rendered_config(manifests)
    # OTLP only from the pod itself; the API on the pod's IP so that the kubelet's probes reach it.
    assert config["listen"]["host"] == "127.0.0.1"
    assert config["listen"]["api_host"] == "0.0.0.0"
    assert config["ingest"]["default_tenant"] == "acme"
    container = otaudit_container(manifests)
    assert [p["name"] for p in container["ports"]] == ["otaudit-api"]  # no OTLP port offered to the cluster
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "otaudit-api"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "otaudit-api"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "restartPolicy" not in container
    assert env_of(container)["OTAUDIT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == RELEASE
    app = spec["containers"][0]
    assert env_of(app)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://localhost:4318"
    # A classic sidecar gets SIGTERM with the app: it keeps serving while the app flushes.
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] > 5 + grace_seconds(config)
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"checksum/config", "checksum/secret"}
    assert {v["name"] for v in spec["volumes"]} == {m["name"] for m in container["volumeMounts"]}


def test_native_sidecar_is_an_init_container_with_restart_policy_always(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("native-sidecar.yaml"))
    assert kinds(manifests) == ["ConfigMap", "Deployment"]  # embedded PostgreSQL: no Secret needed
    spec = pod_spec(manifests)
    assert [c["name"] for c in spec["containers"]] == ["app"]
    (container,) = spec["initContainers"]
    assert container["name"] == "otaudit"
    assert container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"  # the app starts once the collector answers
    assert "lifecycle" not in container  # stopped after the app: no preStop sleep needed
    config = rendered_config(manifests)
    assert config["listen"]["host"] == "127.0.0.1"
    # The embedded PostgreSQL: no URL, its data in the volume at /var/lib/otaudit.
    assert "OTAUDIT_DATABASE_URL" not in env_of(container)
    assert config["database"]["data_dir"] == "/var/lib/otaudit/data"
    mount = next(m for m in container["volumeMounts"] if config["database"]["data_dir"].startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"sizeLimit": "2Gi"}
    assert spec["terminationGracePeriodSeconds"] > grace_seconds(config)


def test_sidecar_with_exec_probes_listens_on_nothing_but_the_loopback(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("sidecar-exec-probes.yaml"))
    container = otaudit_container(manifests)
    config = rendered_config(manifests)
    assert config["listen"]["host"] == config["listen"]["api_host"] == "127.0.0.1"
    assert container["name"] == "audit"
    assert "ports" not in container
    for probe, path in (("startupProbe", "healthz"), ("livenessProbe", "healthz"), ("readinessProbe", "readyz")):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"] and f"http://127.0.0.1:4319/{path}" in command[2], command
    env = env_of(container)
    assert env["OTAUDIT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "service-otaudit", "key": "database-url"}
    assert "OTAUDIT_TOKEN_PEPPER" not in env  # tokenPepperKey: "" says the Secret has none


def test_sidecar_templates_work_from_a_service_chart(chart: helm.Chart, tmp_path: Path) -> None:
    """A service team's chart depends on otaudit and puts the sidecar into its own pod with the named templates."""
    service = tmp_path / "accounts-api"
    (service / "templates").mkdir(parents=True)
    shutil.copytree(CHART, service / "charts" / "otaudit")
    (service / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: accounts-api\nversion: 1.0.0\ndependencies:\n  - name: otaudit\n    version: {chart.version}\n"
    )
    (service / "values.yaml").write_text(
        yaml.safe_dump(
            {"otaudit": {"mode": "sidecar", "sidecar": {"native": True}, "existingSecret": {"name": "accounts-audit"}}}
        )
    )
    (service / "templates" / "deployment.yaml").write_text(
        """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  selector:
    matchLabels: {app: accounts-api}
  template:
    metadata:
      labels: {app: accounts-api}
      annotations:
        {{- include "otaudit.sidecar.annotations" .Subcharts.otaudit | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: {{ include "otaudit.sidecar.terminationGracePeriodSeconds" .Subcharts.otaudit }}
      initContainers:
        {{- include "otaudit.sidecar.container" .Subcharts.otaudit | nindent 8 }}
      containers:
        - name: app
          image: accounts-api:1.0
          env:
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: http://localhost:4318
      volumes:
        {{- include "otaudit.sidecar.volumes" .Subcharts.otaudit | nindent 8 }}
"""
    )
    with helm.Chart.load(service) as parent:
        files = parent.render({}, name="accounts", namespace=NAMESPACE)
    manifests = [doc for path, text in files.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    deployment = one(manifests, "Deployment", "accounts")
    spec = deployment["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    configmap = one(manifests, "ConfigMap")  # rendered by the otaudit subchart itself
    assert configmap["metadata"]["name"] == "accounts-otaudit-config"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["otaudit-config"]["configMap"]["name"] == "accounts-otaudit-config"
    assert env_of(sidecar)["OTAUDIT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "accounts-audit"
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]


# -- values that are refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCont": 3}, "'replicaCont'"),  # a typo'd key
        ({"replicaCount": "three"}, "/replicaCount"),  # a wrong type
        ({"sidecar": {"nativ": True}}, "'nativ'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"config": {"listen": {"grpc_prot": 4317}}}, "'grpc_prot'"),  # the collector's own keys are checked too
        ({"config": {"ingest": {"max_batch_records": "many"}}}, "/config/ingest/max_batch_records"),
        ({"config": {"database": {"url": "postgresql://u:pw@db/otaudit"}}}, "'url'"),  # a secret has no place in a ConfigMap
        ({"auth": {"tokenPepper": "short-secret"}}, "/auth/tokenPepper"),
        ({"mode": "daemonset"}, "/mode"),
    ],
    ids=["typo", "wrong-type", "nested-typo", "enum", "config-typo", "config-type", "secret-in-config", "short-pepper", "mode"],
)
def test_bad_values_are_refused_with_the_schema_message(chart: helm.Chart, values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, merged(MINIMAL, values))
    message = str(refused.value)
    assert "don't meet the specifications of the schema" in message
    assert named in message, message
    assert "short-secret" not in message  # a secret's value is never repeated


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({}, "mode: deployment needs an external PostgreSQL"),
        ({"database": {"url": "postgresql://db/otaudit"}}, "mode: deployment needs a token pepper"),
        (
            {**MINIMAL, "database": {"url": "postgresql://db/otaudit", "embedded": True}},
            "database.embedded is for mode: sidecar only",
        ),
        ({"mode": "sidecar"}, "mode: sidecar needs a database"),
        ({"mode": "sidecar", "database": {"url": "postgresql://db/o", "embedded": True}}, "choose one"),
        ({"existingSecret": {"name": "s"}, "database": {"url": "postgresql://db/o"}}, "existingSecret.name is set"),
        (
            {**MINIMAL, "terminationGracePeriodSeconds": 30},
            "must be larger than the preStop sleep (5) plus config.shutdown.grace_seconds (25)",
        ),
        ({**MINIMAL, "catalogs": {"configMap": "a", "files": {"b.json": "{}"}}}, "set only one of catalogs.configMap"),
        (
            {"mode": "sidecar", "database": {"embedded": True}, "config": {"listen": {"api_host": "127.0.0.1"}}},
            "the kubelet's probes connect to the pod's IP",
        ),
        ({**MINIMAL, "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}}, "not both"),
    ],
    ids=[
        "no-database",
        "no-pepper",
        "embedded-deployment",
        "sidecar-no-database",
        "embedded-and-url",
        "existing-and-values",
        "short-grace",
        "two-catalog-sources",
        "probes-unreachable",
        "pdb-both",
    ],
)
def test_values_that_cannot_work_fail_with_what_to_do(chart: helm.Chart, values: dict[str, Any], says: str) -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render(chart, values)
    assert says in str(refused.value)


# -- the schema ------------------------------------------------------------------------------


def collector_config_schema() -> dict[str, Any]:
    """The collector's configuration schema as values.schema.json must hold it under ``config``.

    References inlined (the chart's schema is one draft-07 document), the title and ids
    dropped, and the three secrets taken out: they come from a Secret, never the ConfigMap.
    """
    schema = json.loads(COLLECTOR_SCHEMA.read_text(encoding="utf-8"))
    defs = schema.pop("$defs")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    config: dict[str, Any] = inline({k: v for k, v in schema.items() if k not in ("$schema", "$id", "title")})
    del config["properties"]["database"]["properties"]["url"]
    del config["properties"]["database"]["properties"]["read_url"]
    del config["properties"]["auth"]["properties"]["token_pepper"]
    del config["properties"]["integrity"]["properties"]["signing_key"]
    return config


def test_config_schema_is_the_collectors() -> None:
    values_schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    config = dict(values_schema["properties"]["config"])
    config.pop("description")
    assert config == collector_config_schema(), (
        "helm/otaudit/values.schema.json properties.config differs from the collector's schema.json "
        "(inlined, without database.url, database.read_url, auth.token_pepper and integrity.signing_key): copy the change over"
    )


def test_every_object_in_the_values_schema_refuses_unknown_keys() -> None:
    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield where
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                yield from walk(value, f"{where}/{n}")

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert list(walk(schema, "")) == []


FREE_FORM = ("resources", "podSecurityContext", "securityContext", "startupProbe", "livenessProbe", "readinessProbe")
"""Values documented as a whole, not key by key."""


def test_default_values_pass_the_schema_and_are_documented(chart: helm.Chart) -> None:
    chart.validate_schema(chart.values)
    readme = (CHART / "README.md").read_text(encoding="utf-8")

    def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and key not in FREE_FORM:
                yield from leaves(value, f"{path}.")
            else:
                yield path

    missing = [path for path in leaves(chart.values) if f"`{path}`" not in readme]
    assert missing == [], f"helm/otaudit/README.md does not document {missing}"


# -- the chart's configuration, run ----------------------------------------------------------


class Pod:
    """What the kubelet would give the collector's container, laid out under a folder of the test machine."""

    def __init__(self, manifests: list[Manifest], root: Path) -> None:
        self.manifests = manifests
        self.root = root
        self.container = otaudit_container(manifests)
        volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
        configmaps = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ConfigMap"}
        for mount in self.container["volumeMounts"]:
            volume = volumes[mount["name"]]
            target = self.host_path(mount["mountPath"])
            if "configMap" in volume:
                data = configmaps[volume["configMap"]["name"]]["data"]
                if "subPath" in mount:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[mount["subPath"]], encoding="utf-8")
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    for name, content in data.items():
                        (target / name).write_text(content, encoding="utf-8")
            else:
                target.mkdir(parents=True, exist_ok=True)

    def host_path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def rewrite_config(self) -> None:
        """The folders the configuration names are the container's: point them at the test machine's copies."""
        path = self.host_path(CONFIG_PATH)
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if "catalogs" in config and "dirs" in config["catalogs"]:
            config["catalogs"]["dirs"] = [str(self.host_path(d)) for d in config["catalogs"]["dirs"]]
        path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def environment(self, database_url: str) -> dict[str, str]:
        """The container's environment: values as given, secretKeyRefs from the chart's Secret; the database is the test's."""
        env: dict[str, str] = {}
        for entry in self.container["env"]:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                secrets = [m for m in self.manifests if m["kind"] == "Secret" and m["metadata"]["name"] == ref["name"]]
                if secrets:
                    env[entry["name"]] = secret_data(self.manifests, ref["name"])[ref["key"]]
                else:  # an existing Secret: here only the database URL, which the test gives
                    assert entry["name"] == "OTAUDIT_DATABASE_URL", f"{entry['name']} comes from a Secret the test does not have"
        env["OTAUDIT_DATABASE_URL"] = database_url  # what must differ: this machine's database
        env["OTAUDIT_CONFIG"] = str(self.host_path(env["OTAUDIT_CONFIG"]))
        return env

    def args(self) -> list[str]:
        args = [str(self.host_path(a)) if a.startswith("/etc/otaudit/") else a for a in self.container["args"]]
        return [*args, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"]  # what must differ: free ports


def printed_hosts(output: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in output:
        match = re.match(r"^\s+(OTLP/gRPC|OTLP/HTTP|API)\s+(?:http://)?([^\s/]+):(\d+)", line)
        if match:
            found[match[1]] = match[2]
    return found


def invoice_event() -> dict[str, Any]:
    return {
        "event": "updateInvoice",
        "attributes": good_attributes(
            **{
                "audit.category": "billing",
                "audit.target.type": "invoice",
                "audit.target.id": "inv-7",
                "audit.target.name": None,
                "audit.changes": [{"field": "total", "old": 100, "new": 120}],
            }
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("values_file", ["deployment-catalogs.yaml", "sidecar-exec-probes.yaml"])
def test_collector_runs_with_the_rendered_configuration(chart: helm.Chart, db: str, tmp_path: Path, values_file: str) -> None:
    manifests = render(chart, ci_values(values_file))
    pod = Pod(manifests, tmp_path / "pod")
    pod.rewrite_config()
    config = rendered_config(manifests)
    proc = CollectorProcess(pod.args(), env=pod.environment(db), cwd=tmp_path).start()
    try:
        hosts = printed_hosts(proc.output)
        assert hosts == {
            "OTLP/gRPC": config["listen"]["host"],
            "OTLP/HTTP": config["listen"]["host"],
            "API": config["listen"]["api_host"],
        }
        api = f"http://127.0.0.1:{proc.ports['API']}"
        probes = [pod.container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        for probe in probes:
            if "httpGet" in probe:
                assert requests.get(api + probe["httpGet"]["path"], timeout=10).status_code == 200
            else:  # the exec probe, as the kubelet would run it in the container
                command = [sys.executable if c == "python" else c for c in probe["exec"]["command"]]
                command[-1] = command[-1].replace(":4319/", f":{proc.ports['API']}/")
                assert subprocess.run(command, check=False, timeout=30).returncode == 0, command

        if values_file == "deployment-catalogs.yaml":
            assert config["listen"]["workers"] == 2
            assert any(line.startswith("  workers     2 processes") for line in proc.output)
            # A shared collector: any service sends over the Service's OTLP/gRPC port, here with a category of its own catalog.
            uid = str(uuid.uuid4())
            event = invoice_event()
            event["attributes"]["log.record.uid"] = uid
            emit_with_stock_sdk(GrpcLogExporter(endpoint=f"127.0.0.1:{proc.ports['OTLP/gRPC']}", insecure=True), [event])
            stored = rows(db)
            assert [(r["id"], r["category"], r["event"], r["target_type"]) for r in stored] == [
                (uid, "billing", "updateInvoice", "invoice")
            ]
        else:
            # A sidecar: the app next to it sends over OTLP/HTTP to localhost.
            uid = str(uuid.uuid4())
            exporter = HttpLogExporter(endpoint=f"http://localhost:{proc.ports['OTLP/HTTP']}/v1/logs")
            emit_with_stock_sdk(exporter, [{"event": "updateRole", "attributes": good_attributes(**{"log.record.uid": uid})}])
            stored = rows(db)
            assert [(r["id"], r["tenant"], r["event"]) for r in stored] == [(uid, "acme", "updateRole")]
    finally:
        assert proc.terminate() == 0, "".join(proc.output)


# -- the image -------------------------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(FROM line, [(instruction, arguments)]) per stage; continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append((arguments.strip(), []))
        else:
            assert stages, f"Dockerfile: {instruction} before FROM"
            stages[-1][1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def test_dockerfile_builds_in_one_stage_and_runs_otaudit_as_a_user_in_another() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile is not multi-stage"
    builder_from, builder = stages[0]
    assert builder_from.endswith(" AS builder")
    assert any(i == "RUN" and "pip wheel" in a and "./collector" in a for i, a in builder)
    copied = {a.split()[0] for i, a in builder if i == "COPY"}
    assert {"collector/", "catalogs/", "config/"} <= copied  # the wheel bundles catalogs/ and config/

    final_from, final = stages[-1]
    assert final_from.split()[0] == "python:3.11-slim"
    runs = " ".join(a for i, a in final if i == "RUN")
    assert "from=builder" in runs and "--no-index" in runs  # installs the builder's wheels, fetches nothing
    assert not re.search(r"\b(gcc|build-essential|libc6-dev|apt-get install)\b", runs), "build tools in the final image"
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert int(user) == chart_values["securityContext"]["runAsUser"] == chart_values["podSecurityContext"]["runAsUser"]
    instructions = dict(final)
    assert json.loads(instructions["ENTRYPOINT"]) == ["otaudit"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    assert set(instructions["EXPOSE"].split()) == {"4317", "4318", "4319"}

    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # Everything out of the build context but what the builder copies.
    assert ignored[0] == "*" and {"!collector/", "!catalogs/", "!config/"} <= set(ignored)


def test_the_chart_runs_the_image_the_docs_build() -> None:
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    image = f"{chart_values['image']['repository']}:{otaudit_collector.__version__}"
    command = f"docker build -t {image} ."
    for doc in (REPO / "Dockerfile", REPO / "README.md", CHART / "README.md"):
        assert command in doc.read_text(encoding="utf-8"), f"{doc.relative_to(REPO)} does not say `{command}`"
    assert chart_values["image"]["tag"] == ""  # the appVersion, the collector's version
