"""Jobs, StatefulSets and garbage collection on the real local control plane."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from cluster_helpers import LOCAL, job, job_condition, pods, wait_until

from dynamiclora_dev.localcluster import LocalCluster
from dynamiclora_dev.localcluster.process import group_alive
from dynamiclora_dev.localcluster.rest import Rest

pytestmark = pytest.mark.integration
NS = "cluster-tests"


@pytest.fixture(scope="module", autouse=True)
def namespace(local_cluster: LocalCluster) -> str:
    """A namespace of its own (the session cluster is shared), ready once its default SA exists."""
    rest = local_cluster.rest()
    if rest.get_or_none(f"/api/v1/namespaces/{NS}") is None:
        rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    wait_until(
        "default ServiceAccount", lambda: rest.get_or_none(f"/api/v1/namespaces/{NS}/serviceaccounts/default"), 30
    )
    return NS


def test_gpu_job_runs_locally_and_succeeds(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    spec = job(
        "gpu-ok",
        ["sh", "-c", 'echo "ip=$POD_IP secret=$TOKEN" > /out/result.txt'],
        local=True,
        gpus=1,
        container={
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "gpu-ok", "key": "token"}}},
            ],
            "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        },
        volumes=[{"name": "out", "persistentVolumeClaim": {"claimName": "gpu-ok-out"}}],
    )
    rest.create(f"/api/v1/namespaces/{NS}/secrets", {"metadata": {"name": "gpu-ok"}, "stringData": {"token": "t0k"}})
    rest.create(
        f"/api/v1/namespaces/{NS}/persistentvolumeclaims",
        {
            "metadata": {"name": "gpu-ok-out"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", spec)
    assert wait_until("job gpu-ok to finish", lambda: job_condition(rest, NS, "gpu-ok"), 90) == "Complete"
    (pod,) = pods(rest, NS, "test-job=gpu-ok")
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pod["status"]["phase"] == "Succeeded"
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("127.10.")
    result = local_cluster.state / "pvc" / NS / "gpu-ok-out" / "result.txt"
    assert result.read_text().strip() == f"ip={pod_ip} secret=t0k"
    logs = Path(pod["metadata"]["annotations"]["dynamiclora.io/local-logs"])
    assert (logs / "main.log").exists()


@pytest.mark.parametrize(
    ("name", "script", "policy", "message"),
    [
        # The kubelet's terminationMessagePolicy semantics, which the operator relies on for failure reasons.
        ("fails", "echo step >&2; echo boom >&2; exit 3", "FallbackToLogsOnError", "step\nboom\n"),
        ("fails-file", "echo written > /dev/termination-log; echo boom >&2; exit 3", "File", "written\n"),
        ("fails-quiet", "echo boom >&2; exit 3", "File", None),
    ],
)
def test_failing_command_fails_the_job(
    local_cluster: LocalCluster, name: str, script: str, policy: str, message: str | None
) -> None:
    rest = local_cluster.rest()
    rest.create(
        f"/apis/batch/v1/namespaces/{NS}/jobs",
        job(name, ["sh", "-c", script], local=True, gpus=1, container={"terminationMessagePolicy": policy}),
    )
    assert wait_until(f"job {name} to finish", lambda: job_condition(rest, NS, name), 90) == "Failed"
    (pod,) = pods(rest, NS, f"test-job={name}")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    if message is None:
        assert "message" not in terminated
    else:
        assert terminated["message"].endswith(message)


def test_unschedulable_gpu_request_stays_pending(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", job("too-many-gpus", ["true"], local=True, gpus=99))
    pod = wait_until("pod of too-many-gpus", lambda: pods(rest, NS, "test-job=too-many-gpus"), 30)[0]
    reason = wait_until(
        "PodScheduled=False",
        lambda: next(
            (
                c.get("message")
                for c in (
                    rest.get(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")["status"].get("conditions")
                    or []
                )
                if c["type"] == "PodScheduled" and c["status"] == "False"
            ),
            None,
        ),
        30,
    )
    assert "nvidia.com/gpu" in reason


def test_kwok_completes_ordinary_jobs(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", job("simulated", ["false"], local=False, gpus=1))
    # Not labelled for the executor: kwok simulates success even though the command would fail.
    assert wait_until("job simulated", lambda: job_condition(rest, NS, "simulated"), 60) == "Complete"


def _statefulset(name: str, *, local: bool) -> dict[str, object]:
    container = {
        "name": "web",
        "image": "python:3.11",
        "command": ["python", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    labels = {"app": name, **(LOCAL if local else {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def _ready_replicas(rest: Rest, name: str) -> int:
    sts = rest.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
    return int(sts.get("status", {}).get("readyReplicas") or 0)


def test_statefulset_pods_serve_on_their_pod_ip_and_die_with_their_owner(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    rest.create(f"/apis/apps/v1/namespaces/{NS}/statefulsets", _statefulset("web", local=True))
    wait_until("2 ready replicas", lambda: _ready_replicas(rest, "web") == 2, 90)
    served = pods(rest, NS, "app=web")
    ips = {p["status"]["podIP"] for p in served}
    assert len(ips) == 2
    for ip in ips:
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
            assert resp.status == 200
    pids = [int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("local://")) for p in served]
    assert all(group_alive(pid) for pid in pids)

    rest.call("DELETE", f"/apis/apps/v1/namespaces/{NS}/statefulsets/web", {"propagationPolicy": "Background"})
    wait_until("pods of web garbage-collected", lambda: not pods(rest, NS, "app=web"), 60)
    wait_until("web processes stopped", lambda: not any(group_alive(pid) for pid in pids), 30)


def test_statefulset_without_executor_runs_under_kwok(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    rest.create(f"/apis/apps/v1/namespaces/{NS}/statefulsets", _statefulset("sim", local=False))
    wait_until("2 ready simulated replicas", lambda: _ready_replicas(rest, "sim") == 2, 60)
    assert all(p["status"]["phase"] == "Running" for p in pods(rest, NS, "app=sim"))


def test_deleting_an_owner_garbage_collects_children(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    owner = rest.create(f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    rest.create(f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    rest.call("DELETE", f"/api/v1/namespaces/{NS}/configmaps/owner")
    wait_until(
        "child garbage-collected",
        lambda: rest.get_or_none(f"/api/v1/namespaces/{NS}/configmaps/child") is None,
        60,
    )


def test_kubectl_works_with_the_kubeconfig(local_cluster: LocalCluster) -> None:
    out = local_cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert sorted(out) == ["node/kwok-cpu-0", "node/kwok-gpu-0", "node/kwok-gpu-1"]
    capacity = local_cluster.kubectl(
        "get", "node", "kwok-gpu-0", "-o", r"jsonpath={.status.allocatable.nvidia\.com/gpu}"
    ).stdout
    assert capacity == "4"
    version = local_cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.3"' in version


def test_unknown_image_fails_with_a_clear_message(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    spec = job("no-image", ["run"], local=True, container={"image": "nginx:1.27"})
    rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", spec)
    assert wait_until("job no-image", lambda: job_condition(rest, NS, "no-image"), 60) == "Failed"
    (pod,) = pods(rest, NS, "test-job=no-image")
    assert pod["status"]["reason"] == "LocalExecutorError"
    assert "image 'nginx:1.27' has no local command" in pod["status"]["message"]


def test_crashing_container_is_restarted_with_backoff(local_cluster: LocalCluster) -> None:
    rest = local_cluster.rest()
    pod = {
        "metadata": {"name": "crasher", "labels": LOCAL},
        "spec": {
            "restartPolicy": "Always",
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo crash; exit 2"]}],
        },
    }
    rest.create(f"/api/v1/namespaces/{NS}/pods", pod)

    def restarts() -> int:
        got = rest.get(f"/api/v1/namespaces/{NS}/pods/crasher")
        statuses = got["status"].get("containerStatuses") or [{}]
        return int(statuses[0].get("restartCount", 0))

    wait_until("two restarts", lambda: restarts() >= 2, 30)
    got = rest.get(f"/api/v1/namespaces/{NS}/pods/crasher")
    assert got["status"]["phase"] == "Running"  # restartPolicy Always: never terminal
    log = Path(got["metadata"]["annotations"]["dynamiclora.io/local-logs"]) / "c.log"
    assert log.read_text().count("crash") >= 3
    rest.call("DELETE", f"/api/v1/namespaces/{NS}/pods/crasher")
    wait_until("crasher deleted", lambda: rest.get_or_none(f"/api/v1/namespaces/{NS}/pods/crasher") is None, 30)


def test_a_distributed_training_job_and_its_rendezvous_service(local_cluster: LocalCluster) -> None:
    """Issue 20: the indexed Job and headless Service the operator builds for torchrun, on the real API
    server: accepted as built, one pod per node index with the stable hostname the rendezvous endpoint
    names, and the Service goes with its Job. (kwok simulates the pods: nothing runs torchrun here.)"""
    from dynamiclora.api.tier import TrainingTemplate
    from dynamiclora.builders.distributed import rendezvous_service, shape

    rest = local_cluster.rest()
    plain = job("dist-train", ["true"], local=False)
    plain["metadata"].update(namespace=NS, labels={"app": "dist-train"}, annotations={})
    built = shape(plain, TrainingTemplate(nodes=2, procs_per_node=1, batch_size=8))
    created = rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", built)
    rest.create(f"/api/v1/namespaces/{NS}/services", rendezvous_service(created))
    assert wait_until("indexed job completes", lambda: job_condition(rest, NS, "dist-train"), 120) == "Complete"
    names = wait_until("both indexed pods", lambda: sorted(
        (p["spec"].get("hostname"), p["spec"].get("subdomain")) for p in pods(rest, NS, "test-job=dist-train"))
        if len(pods(rest, NS, "test-job=dist-train")) == 2 else None, 60)  # fmt: skip
    assert names == [("dist-train-0", "dist-train"), ("dist-train-1", "dist-train")]  # <job>-0.<job> resolves
    svc = rest.get(f"/api/v1/namespaces/{NS}/services/dist-train")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    rest.call("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/dist-train", {"propagationPolicy": "Background"})
    wait_until("the Service goes with its Job",
               lambda: rest.get_or_none(f"/api/v1/namespaces/{NS}/services/dist-train") is None or None, 60)


ALL_REDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank {dist.get_rank()} of {dist.get_world_size()}: sum {t.item():.0f}", flush=True)
dist.destroy_process_group()
"""


def test_torchrun_workers_of_an_indexed_job_meet_at_pod_0(local_cluster: LocalCluster, tmp_path: Path) -> None:
    """Issue 20: the built-in launcher's rendezvous really forms on the cluster. Two pods of the indexed
    Job the operator builds run torchrun (trainer image), find pod 0 by its name ``<job>-0.<job>`` (the
    executor's stand-in for cluster DNS) and all-reduce over gloo."""
    from dynamiclora.api.tier import TrainingTemplate
    from dynamiclora.builders.distributed import rendezvous_service, shape

    rest = local_cluster.rest()
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    plain = job("ddp-meet", [], local=True, container={"image": "ghcr.io/dynamiclora/trainer:dev"})
    plain["metadata"].update(namespace=NS, labels={"app": "ddp-meet"}, annotations={})
    built = shape(plain, TrainingTemplate(nodes=2, procs_per_node=1, batch_size=8))
    (container,) = built["spec"]["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["-m", "dynamiclora.cli"]
    container["command"] = [*container["command"][:-2], str(script)]  # the same launcher, a 6-line program
    created = rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", built)
    rest.create(f"/api/v1/namespaces/{NS}/services", rendezvous_service(created))
    state = wait_until("the indexed job finishes", lambda: job_condition(rest, NS, "ddp-meet"), 180)
    logs = {p["spec"]["hostname"]: (Path(p["metadata"]["annotations"]["dynamiclora.io/local-logs"]) / "main.log")
            for p in pods(rest, NS, "test-job=ddp-meet")}  # fmt: skip
    text = {host: log.read_text() if log.is_file() else "" for host, log in logs.items()}
    assert state == "Complete", text
    assert "rank 0 of 2: sum 3" in text["ddp-meet-0"] and "rank 1 of 2: sum 3" in text["ddp-meet-1"], text


def test_a_job_the_scheduler_cannot_place_is_named_with_its_verdict(local_cluster: LocalCluster) -> None:
    """Issue 20: the training tier reads the real scheduler's verdict on a pod asking for more GPUs than any
    node has (controllers/job_failure.py:unschedulable), while the Job waits."""
    from dynamiclora.controllers.job_failure import unschedulable
    from dynamiclora.kube import ApiKube

    rest, kube = local_cluster.rest(), ApiKube(str(local_cluster.kubeconfig))
    rest.create(f"/apis/batch/v1/namespaces/{NS}/jobs", job("too-big", ["true"], local=True, gpus=64))
    body = wait_until("the Job", lambda: kube.get("Job", NS, "too-big"), 30)
    why = wait_until("the scheduler's verdict", lambda: unschedulable(kube, body) or None, 60)
    assert why.startswith("pod too-big-") and "cannot be scheduled: 0/" in why and "nvidia.com/gpu" in why, why
    rest.call("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/too-big", params={"propagationPolicy": "Background"})
    assert unschedulable(kube, {"metadata": {"name": "gpu-ok", "namespace": NS}}) == ""  # ran: nothing to say


def test_the_operators_lists_come_page_by_page_without_managed_fields(local_cluster: LocalCluster) -> None:
    """Issue 19: a Swarm of 10,000 agents lists 20,000 tiers; the operator reads them in pages (the API
    server's continue tokens, here 2 a page) and keeps no ``managedFields`` (its bookkeeping, never read)."""
    from dynamiclora.kube import ApiKube

    rest, kube = local_cluster.rest(), ApiKube(str(local_cluster.kubeconfig))
    for i in range(5):
        doc = {"metadata": {"name": f"paged-{i}", "labels": {"paged": "yes"}}, "data": {"i": str(i)}}
        rest.create(f"/api/v1/namespaces/{NS}/configmaps", doc)
    kube.LIST_PAGE = 2
    items = kube.list("ConfigMap", NS, {"paged": "yes"})
    assert sorted(i["metadata"]["name"] for i in items) == [f"paged-{i}" for i in range(5)]
    assert all("managedFields" not in i["metadata"] and i["kind"] == "ConfigMap" for i in items)
    assert "managedFields" in rest.get(f"/api/v1/namespaces/{NS}/configmaps/paged-0")["metadata"]
