"""A JobSpec rendered as a PyTorchJob (Training Operator v1, `kubeflow.org/v1`), with the SDK's models.

One Master and `num_nodes - 1` Workers, each a pod with one container named `pytorch`. The operator injects
MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and, because `nprocPerNode` is set, PET_NNODES, PET_NODE_RANK
and PET_NPROC_PER_NODE; torchrun reads the PET_* ones by itself, the master address and port are passed
with Kubernetes' $(VAR) expansion.

Restarts: `restartPolicy: ExitCode` on every replica. The operator then runs the pods with restartPolicy
Never and, when a pod fails, fails the job at once for exit codes 1-127 and deletes and recreates the pod
for 128-255 (kubeflow/training-operator v1.9, pkg/controller.v1/common/pod.go, IsRetryableExitCode). The
other ranks lose their peer, exit 138, and are recreated too: the whole group restarts and resumes from
the checkpoint in --dump_path. The operator does not bound those restarts (its backoffLimit counts container
restarts, which pods with restartPolicy Never never have: kubeflow/trainer#2045), so the launcher counts
them and ends the job after `max_restarts` (launch.kube); backoffLimit is set to the same number anyway.

Gang scheduling: `schedulingPolicy.minAvailable` = every replica, with the queue and priority class; the
operator turns it into a PodGroup when it runs with a gang scheduler (Volcano or the scheduler-plugins
coscheduling plugin). Kueue: the `kueue.x-k8s.io/queue-name` label when a queue is named; Kueue suspends
the job until its LocalQueue admits all of it.
"""

from __future__ import annotations

from typing import Any

from kubeflow.training import models
from kubernetes import client as k8s

from launch import pod
from launch.pod import APP_LABELS
from launch.spec import KUEUE_QUEUE_LABEL, JobSpec

CONTAINER_NAME = "pytorch"  # the operator finds the training container (and its port) by this name
PORT_NAME = "pytorchjob-port"
PORT = 23456
RESTART_POLICY = "ExitCode"
RENDEZVOUS_ARGS = ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)"]


def _pod_template(spec: JobSpec) -> k8s.V1PodTemplateSpec:
    command = spec.node_command(RENDEZVOUS_ARGS)
    container = k8s.V1Container(
        name=CONTAINER_NAME, image=spec.image, image_pull_policy="IfNotPresent", command=command[:1],
        args=command[1:], env=pod.env(spec),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=PORT, protocol="TCP")],
        resources=pod.resources(spec), volume_mounts=pod.volume_mounts(),
        security_context=pod.container_security_context())
    pod_spec = k8s.V1PodSpec(
        containers=[container], volumes=pod.volumes(spec),
        node_selector=dict(spec.node_selector) or None, tolerations=pod.tolerations(spec) or None,
        priority_class_name=spec.priority_class or None,
        service_account_name=spec.service_account or None, image_pull_secrets=pod.image_pull_secrets(spec),
        automount_service_account_token=False,  # training never talks to the Kubernetes API
        security_context=pod.pod_security_context())
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=pod.pod_labels(spec),
                                                           annotations=pod.pod_annotations(spec)), spec=pod_spec)


def build_pytorchjob(spec: JobSpec) -> models.KubeflowOrgV1PyTorchJob:
    spec.validate()
    template = _pod_template(spec)
    replicas = {"Master": models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy=RESTART_POLICY,
                                                          template=template)}
    if spec.num_nodes > 1:
        replicas["Worker"] = models.KubeflowOrgV1ReplicaSpec(replicas=spec.num_nodes - 1,
                                                             restart_policy=RESTART_POLICY, template=template)
    labels = {**APP_LABELS, **spec.labels}
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace or None, labels=labels),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                backoff_limit=spec.max_restarts,
                clean_pod_policy="Running",
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                scheduling_policy=models.KubeflowOrgV1SchedulingPolicy(
                    min_available=spec.num_nodes, queue=spec.queue or None,
                    priority_class=spec.priority_class or None),
            ),
        ),
    )


def to_manifest(job: models.KubeflowOrgV1PyTorchJob) -> dict[str, Any]:
    """The job as the API server receives it (camelCase JSON, no nulls)."""
    return pod.as_dict(job)
