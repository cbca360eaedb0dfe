"""A JobSpec rendered as a TrainJob (Kubeflow Trainer v2, `trainer.kubeflow.org/v1alpha1`), with the SDK's models
(`kubeflow-trainer-api`).

The TrainJob references a torch ClusterTrainingRuntime (`JobSpec.training_runtime`; ours is
k8s/trainer-v2/cluster/runtime.yaml) and sets what is ours in `spec.trainer`: image, command and args, env (the S3
keys from the Secret), numNodes, numProcPerNode and resourcesPerNode. The rest of the pod goes through the one
runtime patch the v2 API allows a client (`spec.runtimePatches`, keyed by its manager): node selector,
tolerations, volumes (/dev/shm, /tmp, the shard cache), pod and container security contexts, the ServiceAccount
and image pull secrets, labels and annotations (Istio's sidecar off by default) of the `node` pods. The runtime
holds what a TrainJob may not set: restartPolicy Never, no service-account token, and the restart rules.

Every node runs `JobSpec.node_command([])`: the torch plugin injects PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK (the Job completion index), PET_MASTER_ADDR (`<job>-node-0-0.<job>`) and PET_MASTER_PORT
(29500), which torchrun reads by itself (pkg/runtime/framework/plugins/torch/torch.go).

Restarts: our runtime's Job has backoffLimit 0 and a podFailurePolicy that fails it at once (reason
PodFailurePolicy) for exit codes 1-127 of the `node` container; its JobSet failurePolicy fails the whole
JobSet on that reason and otherwise (128-255: 138, 143, a lost node) restarts every Job of the group, at most
failurePolicy.maxRestarts times. The launcher (launch.kube) also ends the job after `max_restarts`.

Queues: the `kueue.x-k8s.io/queue-name` label (Kueue's TrainJob integration admits all nodes together, the gang);
a priority class becomes Kueue's `kueue.x-k8s.io/priority-class` (a WorkloadPriorityClass): a TrainJob cannot
set its pods' priorityClassName (the runtime can).
"""

from __future__ import annotations

from typing import Any

from kubeflow_trainer_api import models

from launch import pod
from launch.spec import KUEUE_QUEUE_LABEL, JobSpec

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
CONTAINER_NAME = "node"  # the torch runtime's trainer container (and its ReplicatedJob)
RENDEZVOUS_ARGS: list[str] = []  # torchrun reads the PET_* env the torch plugin injects
PATCH_MANAGER = "unmix-swav.io/launch"  # who owns our runtime patch (the API keys patches by manager)
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def _convert(model_class: type, kubernetes_model: Any) -> Any:
    """A Kubernetes client model as the trainer-api's model of the same object (both are the API's JSON)."""
    return model_class.from_dict(pod.as_dict(kubernetes_model))


def _node_patch(spec: JobSpec) -> models.TrainerV1alpha1RuntimePatch:
    """The node pods' part that spec.trainer has no field for."""
    pod_spec = models.TrainerV1alpha1PodSpecPatch(
        containers=[models.TrainerV1alpha1ContainerPatch(
            name=CONTAINER_NAME,
            security_context=_convert(models.IoK8sApiCoreV1SecurityContext, pod.container_security_context()),
            volume_mounts=[_convert(models.IoK8sApiCoreV1VolumeMount, mount) for mount in pod.volume_mounts()])],
        volumes=[_convert(models.IoK8sApiCoreV1Volume, volume) for volume in pod.volumes(spec)],
        node_selector=dict(spec.node_selector) or None,
        tolerations=[_convert(models.IoK8sApiCoreV1Toleration, t) for t in pod.tolerations(spec)] or None,
        service_account_name=spec.service_account or None,
        image_pull_secrets=[_convert(models.IoK8sApiCoreV1LocalObjectReference, ref)
                            for ref in pod.image_pull_secrets(spec) or []] or None,
        security_context=_convert(models.IoK8sApiCoreV1PodSecurityContext, pod.pod_security_context()))
    template = models.TrainerV1alpha1PodTemplatePatch(
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=pod.pod_labels(spec),
                                                                 annotations=pod.pod_annotations(spec)),
        spec=pod_spec)
    node_job = models.TrainerV1alpha1ReplicatedJobPatch(
        name=CONTAINER_NAME,
        template=models.TrainerV1alpha1JobTemplatePatch(spec=models.TrainerV1alpha1JobSpecPatch(template=template)))
    return models.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=models.TrainerV1alpha1JobSetTemplatePatch(
                spec=models.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[node_job]))))


def build_trainjob(spec: JobSpec) -> models.TrainerV1alpha1TrainJob:
    spec.validate()
    command = spec.node_command(RENDEZVOUS_ARGS)
    trainer = models.TrainerV1alpha1Trainer(
        image=spec.image, command=command[:1], args=command[1:],
        env=[_convert(models.IoK8sApiCoreV1EnvVar, variable) for variable in pod.env(spec)],
        num_nodes=spec.num_nodes, num_proc_per_node=spec.nproc_per_node,
        resources_per_node=_convert(models.IoK8sApiCoreV1ResourceRequirements, pod.resources(spec)))
    labels = {**pod.APP_LABELS, **spec.labels}
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    if spec.priority_class:
        labels[KUEUE_PRIORITY_LABEL] = spec.priority_class
    return models.TrainerV1alpha1TrainJob(
        api_version=API_VERSION, kind=KIND,
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=spec.name, namespace=spec.namespace or None,
                                                                 labels=labels),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtime_ref=models.TrainerV1alpha1RuntimeRef(name=spec.training_runtime, kind="ClusterTrainingRuntime",
                                                         api_group="trainer.kubeflow.org"),
            trainer=trainer, runtime_patches=[_node_patch(spec)],
            # Kueue resumes a queued job once its LocalQueue admits every node (Trainer's Kueue example).
            suspend=True if spec.queue else None))


def to_manifest(job: models.TrainerV1alpha1TrainJob) -> dict[str, Any]:
    """The job as the API server receives it (camelCase JSON, no nulls)."""
    return job.to_dict()
