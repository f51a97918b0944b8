"""The Helm chart deploy/helm/lighttts: `helm lint` and `helm template` through Helm's own Go SDK
(helm-python-sdk: no helm binary can be installed here), every rendered core object validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and what the chart promises checked
on the rendered objects: a GPU, /dev/shm in memory, probes, a grace period that covers the drain, a Service and
ServiceMonitor that find the pods, a model volume, and autoscaling by HPA or KEDA."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "lighttts"
KUBE_VERSION = "1.33.0"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}  # custom resources: no schema in the Kubernetes OpenAPI


def render(values: dict | None = None) -> dict[str, dict]:
    """kind -> object, of `helm template tts CHART -n speech` with `values`."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values or {}, name="tts", namespace="speech")
    objects = [doc for path, text in files.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {obj["kind"]: obj for obj in objects}


VARIANTS = {
    "defaults": {},
    "keda+hostPath": {"autoscaling": {"mode": "keda"}, "model": {"volume": "hostPath"}},
    "fixed replicas, no model, no monitor": {
        "autoscaling": {"mode": "none"},
        "model": {"volume": "none"},
        "serviceMonitor": {"enabled": False},
        "gpu": {"nodeSelector": {}},
    },
    "existing claim, queue-depth metric": {
        "model": {"existingClaim": "shared-models"},
        "autoscaling": {"metric": "lighttts_queue_depth"},
    },
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_lint_has_no_errors(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=KUBE_VERSION)
    assert report["errors"] == [] and all(m["severity"] < 3 for m in report["messages"]), report


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_rendered_objects_match_the_kubernetes_schemas(values):
    for kind, obj in render(values).items():
        if kind not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def pod_spec(objects: dict) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]


def test_deployment_gpu_shm_probes_and_drain():
    objects = render(
        {
            "server": {"drainTimeoutSeconds": 45, "terminationGraceExtraSeconds": 10, "preStopSleepSeconds": 5},
            "gpu": {"count": 2},
        }
    )
    pod = pod_spec(objects)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert (
        volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"]
        == objects["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    args = container["args"]
    assert args[args.index("--drain_timeout_s") + 1] == "45"
    assert args[args.index("--model_dir") + 1] == "/models/CosyVoice2-0.5B"
    # the pod is killed only after the preStop wait and the whole drain, with room to exit
    assert pod["terminationGracePeriodSeconds"] == 5 + 45 + 10
    assert pod["securityContext"]["runAsUser"] == 1000  # the image's non-root user


def test_no_model_volume_serves_the_tiny_model():
    pod = pod_spec(render({"model": {"volume": "none"}}))
    assert "--model_dir" not in pod["containers"][0]["args"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]


def test_service_and_monitor_find_the_pods():
    objects = render()
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_hpa_scales_the_deployment_on_a_per_pod_metric_the_adapter_serves():
    objects = render({"autoscaling": {"targetPerPod": "12", "maxReplicas": 5}})
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "12"}
    assert "replicas" not in objects["Deployment"]["spec"]  # the HPA owns the replica count
    adapter = yaml.safe_load((CHART / "prometheus-adapter-rules.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert metric["pods"]["metric"]["name"] in served
    assert yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["metric"] in served
    assert "ScaledObject" not in objects


def test_keda_replaces_the_hpa():
    objects = render({"autoscaling": {"mode": "keda", "targetPerPod": "15"}})
    assert "HorizontalPodAutoscaler" not in objects
    scaled = objects["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "15"
    assert trigger["metadata"]["query"].startswith("sum(lighttts_active_requests{")


def test_fixed_replicas_without_autoscaling():
    objects = render({"autoscaling": {"mode": "none"}, "replicaCount": 3})
    assert objects["Deployment"]["spec"]["replicas"] == 3
    assert not {"HorizontalPodAutoscaler", "ScaledObject"} & objects.keys()
