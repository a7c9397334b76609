"""A distributed training Job as a Kubeflow Trainer ``TrainJob`` (trainer.kubeflow.org/v1alpha1, v2.0.0).

Where Kubeflow Trainer is installed, a torch-distributed ``ClusterTrainingRuntime`` gives the rendezvous
(the runtime's torch policy sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` in its ``node`` container, which ``torchrun`` reads) and the
gang of pods (a JobSet). The TrainJob carries exactly what the built-in indexed Job runs: the same image,
entrypoint arguments, environment, resources, volumes and mounts (:func:`train_job` derives it from the
Job that :func:`~dynamiclora.builders.jobs.build_training_job` builds), so the two launchers cannot drift.
The generated object is validated against the real CRD (taken from the Kubeflow Trainer v2.0.0 module)
on the local API server by ``tests/integration/cluster/test_cluster_trainjob.py``.
"""

from __future__ import annotations

from dynamiclora.api.tier import TrainingTemplate
from dynamiclora.builders.distributed import KUEUE_QUEUE_LABEL
from dynamiclora.kube import Obj

TRAINJOB_API_VERSION = "trainer.kubeflow.org/v1alpha1"
TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"
TRAINER_NODE = "node"  # the runtime's trainer job and container: what the overrides target
# torchrun takes the rendezvous from the runtime's PET_* variables; a dead worker fails the run (retried
# by the operator, resuming from the checkpoint in the store), as with the built-in launcher.
TORCHRUN = ["torchrun", "--max-restarts=0", "-m", "dynamiclora.cli"]


def train_job(job: Obj, t: TrainingTemplate, runtime: str, runtime_kind: str = "ClusterTrainingRuntime") -> Obj:
    """The TrainJob that runs what the training Job ``job`` runs, on ``t.nodes x t.procsPerNode`` processes
    of the training runtime ``runtime`` (a ``ClusterTrainingRuntime``, or a namespaced ``TrainingRuntime``)."""
    meta = job["metadata"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    override: Obj = {"targetJobs": [{"name": TRAINER_NODE}], "volumes": list(pod.get("volumes", [])),
                     "containers": [{"name": TRAINER_NODE, "volumeMounts": list(container.get("volumeMounts", []))}]}
    for key in ("serviceAccountName", "nodeSelector", "tolerations"):
        if key in pod:
            override[key] = pod[key]
    trainer: Obj = {"image": container["image"], "command": list(TORCHRUN), "args": list(container["args"]),
                    "env": list(container.get("env", [])), "numNodes": t.nodes, "numProcPerNode": t.procs_per_node}
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    labels = dict(meta["labels"])
    # No spec.labels: the runtime's JobSet and Jobs are Kubeflow Trainer's, not the operator's to watch.
    spec: Obj = {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": runtime_kind},
                 "trainer": trainer, "podSpecOverrides": [override]}
    if t.queue:  # Kueue admits (resumes) the whole TrainJob when its quota allows
        labels[KUEUE_QUEUE_LABEL] = t.queue
        spec["suspend"] = True
    return {
        "apiVersion": TRAINJOB_API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
                     "annotations": dict(meta.get("annotations", {})),
                     "ownerReferences": list(meta.get("ownerReferences", []))},
        "spec": spec,
    }  # fmt: skip
