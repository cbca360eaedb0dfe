"""Is this cluster ready for our jobs? Each check is one Finding: what holds, what is missing, what we may not see.

`run_checks(options, api_client)` asks the API server, with the launcher's own client configuration
(launch.kube.load_api_client: in a pod its service account, else KUBECONFIG / ~/.kube/config):
the API answers; the job CRDs are served (discovery, which every authenticated user may read); our
ClusterTrainingRuntime exists and fails a job on exactly the exit codes launch.errors.is_retryable calls
permanent; the launcher may create, get and delete its jobs and read pods and their logs
(SelfSubjectAccessReview); the S3 Secret exists and holds the keys; the LocalQueue exists when a queue is
named; some schedulable node offers `nvidia.com/gpu` >= G under our node selector and tolerations.

"missing" (the piece is not there) and "forbidden" for a right the launcher needs fail the check; "not
allowed to check X" (the launcher may not read X, which only explains or verifies) is a warning. Every call
has the request timeout (connect, read) = (T, T) and no retries, so one call takes at most 2T (T =
`request_timeout_s`, default 5 s; a hostname's DNS lookup is not bounded by it), the whole preflight at most
MAX_CALLS x 2T; an API server that does not answer the first call ends it after 2T.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

from launch.apierrors import message_of, status_of
from launch.errors import is_retryable
from launch.kube import load_api_client
from launch.spec import (
    BACKENDS,
    DEFAULT_S3_SECRET,
    DEFAULT_TRAINING_RUNTIME,
    S3_SECRET_KEYS,
    JobSpec,
    default_placement,
)
from trainer.errors import UserError

GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_GROUP = "kueue.x-k8s.io"
# Kind -> (group, plural) of the job CRDs each backend needs.
CRDS = {"pytorchjob": [("PyTorchJob", "kubeflow.org", "pytorchjobs")],
        "trainjob": [("TrainJob", "trainer.kubeflow.org", "trainjobs"), ("JobSet", "jobset.x-k8s.io", "jobsets"),
                     ("ClusterTrainingRuntime", "trainer.kubeflow.org", "clustertrainingruntimes")]}
JOB_API = {"pytorchjob": ("kubeflow.org", "pytorchjobs", "k8s/training-operator-v1/access"),
           "trainjob": ("trainer.kubeflow.org", "trainjobs", "k8s/trainer-v2/access")}
MAX_CALLS = 24  # enforced; typically: version, discovery (3-5), runtime, access reviews (<= 11), secret, queue, nodes
PERMANENT_EXIT_CODES = frozenset(code for code in range(1, 256) if not is_retryable(code))


@dataclass(frozen=True)
class PreflightOptions:
    namespace: str = "default"
    backend: str = JobSpec.__dataclass_fields__["job_backend"].default
    training_runtime: str = DEFAULT_TRAINING_RUNTIME
    queue: str = ""
    s3_secret: str = DEFAULT_S3_SECRET  # "": no Secret (the pods' identity gives S3 access)
    gpus_per_node: int = JobSpec.__dataclass_fields__["gpus_per_node"].default
    node_selector: dict[str, str] | None = None  # None: the GPU pool's default (launch.spec.default_placement)
    tolerations: list[dict[str, Any]] | None = None
    request_timeout_s: float = 5.0

    @classmethod
    def from_spec(cls, spec: JobSpec, s3_secret: str | None = None) -> PreflightOptions:
        """What a step's JobSpec needs of the cluster (its placement exactly as its pods get it)."""
        return cls(namespace=spec.namespace, backend=spec.job_backend, training_runtime=spec.training_runtime,
                   queue=spec.queue, s3_secret=spec.s3_secret_name if s3_secret is None else s3_secret,
                   gpus_per_node=spec.gpus_per_node, node_selector=dict(spec.node_selector),
                   tolerations=[dict(t) for t in spec.tolerations])


@dataclass(frozen=True)
class Finding:
    check: str  # api, crd, runtime, rbac, secret, queue, gpu
    status: str  # ok | missing | forbidden | unverified
    message: str  # one line; for anything not ok it names the fix

    @property
    def failed(self) -> bool:
        return self.status in ("missing", "forbidden")

    def line(self) -> str:
        label = {"ok": "ok", "missing": "missing", "forbidden": "missing", "unverified": "warning"}[self.status]
        return f"{label}: [{self.check}] {self.message}"


class _Unreachable(Exception):
    """The API server did not answer (connection refused, timeout, TLS)."""


@dataclass
class _Api:
    client: k8s.ApiClient
    timeout: float
    calls: int = 0
    groups: dict[str, list[str]] = field(default_factory=dict)  # served group -> versions, preferred first
    _resources: dict[str, set[str]] = field(default_factory=dict)  # group/version -> resources it serves

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self.calls >= MAX_CALLS:  # keeps the stated bound MAX_CALLS x 2T whatever discovery lists
            raise _Unreachable(f"the preflight's budget of {MAX_CALLS} API calls is spent")
        self.calls += 1
        try:
            return self.client.call_api(path, method, header_params={"Accept": "application/json",
                                                                     "Content-Type": "application/json"},
                                        body=body, response_type="object", auth_settings=["BearerToken"],
                                        _return_http_data_only=True, _request_timeout=(self.timeout, self.timeout))
        except k8s.ApiException:
            raise
        except Exception as error:  # urllib3's MaxRetryError, timeouts, TLS: no HTTP answer at all
            raise _Unreachable(f"{type(error).__name__}: {(str(error).splitlines() or ['?'])[0][:200]}") from error

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when it does not exist (404); raises ApiException otherwise."""
        try:
            return self.call("GET", path)
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise

    def version_of(self, group: str, resource: str) -> str | None:
        """The first version of `group` (preferred first) whose discovery lists `resource`."""
        for version in self.groups.get(group, []):
            if f"{group}/{version}" not in self._resources:
                found = self.get(f"/apis/{group}/{version}") or {}
                self._resources[f"{group}/{version}"] = {item.get("name") for item in found.get("resources", [])}
            if resource in self._resources[f"{group}/{version}"]:
                return version
        return None


def _forbidden_or_error(check: str, what: str, error: Exception) -> Finding:
    if status_of(error) == 403:
        return Finding(check, "unverified", f"not allowed to check {what} ({message_of(error)}); grant the "
                                            "launcher what k8s/ access grants to check it")
    return Finding(check, "unverified", f"could not check {what}: {message_of(error)}")


def _read(api: _Api, check: str, what: str, path: str, missing: str = "") -> tuple[Any, list[Finding]]:
    """GET `path` for a check: (the object, []) or (None, the one finding why not): not allowed to or could not
    check `what`, or, where `missing` is given, the object does not exist (else a 404 raises like any error)."""
    try:
        found = api.get(path) if missing else api.call("GET", path)
    except k8s.ApiException as error:
        return None, [_forbidden_or_error(check, what, error)]
    if found is None:
        return None, [Finding(check, "missing", missing)]
    return found, []


def _check_api(api: _Api) -> Finding:
    host = api.client.configuration.host
    try:
        try:
            version = api.call("GET", "/version")
        except k8s.ApiException as error:
            if error.status in (401, 403):
                raise
            version = {}  # an API server may hide /version; it answered, which is what this checks
        groups = api.call("GET", "/apis").get("groups", [])  # discovery: every authenticated user may read it
    except _Unreachable as error:
        return Finding("api", "missing", f"the Kubernetes API at {host} did not answer within {2 * api.timeout:g}s "
                                         f"({error}); check KUBECONFIG / the context, the VPN or port-forward, or "
                                         "run this in a pod of the cluster")
    except k8s.ApiException as error:
        return Finding("api", "missing", f"the Kubernetes API at {host} refused the credentials ({error.status}: "
                                         f"{message_of(error)}); renew the kubeconfig's token or use the pod's "
                                         "service account")
    for group in groups:
        versions = [item["version"] for item in group.get("versions", [])]
        preferred = (group.get("preferredVersion") or {}).get("version")
        api.groups[group["name"]] = sorted(versions, key=lambda v: v != preferred)
    return Finding("api", "ok", f"Kubernetes API {version.get('gitVersion', '(version hidden)')} at {host} answers")


def _check_crds(api: _Api, options: PreflightOptions) -> list[Finding]:
    findings, missing_groups = [], set()
    for kind, group, plural in CRDS[options.backend]:
        version = api.version_of(group, plural)
        if version is None and group in missing_groups:
            continue  # one line per operator that is not installed
        if version is None:
            missing_groups.add(group)
            fix = ("install Kubeflow Trainer v2 (it brings JobSet), or use --backend pytorchjob on a Training "
                   "Operator v1 cluster" if options.backend == "trainjob" else
                   "install the Training Operator v1 (kubeflow.org PyTorchJob), or use --backend trainjob on a "
                   "Kubeflow Trainer v2 cluster")
            findings.append(Finding("crd", "missing", f"{kind} ({plural}.{group}) is not served; {fix}"))
        else:
            served = ", ".join(api.groups.get(group, []))
            findings.append(Finding("crd", "ok", f"{kind} served as {group}/{version} (versions: {served})"))
    if options.queue and api.version_of(KUEUE_GROUP, "localqueues") is None:
        findings.append(Finding("crd", "missing", f"queue {options.queue!r} is named but Kueue is not installed "
                                                  f"(no {KUEUE_GROUP} LocalQueues served); install Kueue or leave "
                                                  "the queue empty"))
    return findings


def runtime_rule_problems(runtime: dict[str, Any]) -> list[str]:
    """What a ClusterTrainingRuntime lacks of our exit-code rules: each node Job fails at once (FailJob) on
    exactly the permanent exit codes of launch.errors.is_retryable, restarts no pod itself (backoffLimit 0),
    and the JobSet fails on that reason while it restarts the group on any other failure."""
    spec = runtime.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    problems = []
    rules = (template.get("failurePolicy") or {}).get("rules") or []
    if not any(rule.get("action") == "FailJobSet" and "PodFailurePolicy" in (rule.get("onJobFailureReasons") or [])
               for rule in rules):
        problems.append("no failurePolicy rule FailJobSet on PodFailurePolicy")
    jobs = template.get("replicatedJobs") or []
    if not jobs:
        problems.append("no replicatedJobs")
    for job in jobs:
        job_spec = (job.get("template") or {}).get("spec") or {}
        codes: set[int] = set()
        for rule in (job_spec.get("podFailurePolicy") or {}).get("rules") or []:
            on_codes = rule.get("onExitCodes") or {}
            if rule.get("action") != "FailJob" or not on_codes:
                continue
            values = {int(v) for v in on_codes.get("values") or []}
            codes |= values if on_codes.get("operator") == "In" else set(range(1, 256)) - values
        if codes != PERMANENT_EXIT_CODES:
            problems.append(f"replicatedJob {job.get('name')!r} fails at once on exit codes {_ranges(codes)}, not on "
                            f"the permanent ones {_ranges(PERMANENT_EXIT_CODES)}")
        if job_spec.get("backoffLimit") != 0:
            problems.append(f"replicatedJob {job.get('name')!r} has backoffLimit {job_spec.get('backoffLimit')}, not 0")
    return problems


def _ranges(codes: set[int] | frozenset[int]) -> str:
    if not codes:
        return "none"
    ordered, parts, start = sorted(codes), [], None
    for index, code in enumerate(ordered):
        start = code if start is None else start
        if index + 1 == len(ordered) or ordered[index + 1] != code + 1:
            parts.append(f"{start}" if start == code else f"{start}-{code}")
            start = None
    return ",".join(parts)


def _check_runtime(api: _Api, options: PreflightOptions) -> list[Finding]:
    version = api.version_of("trainer.kubeflow.org", "clustertrainingruntimes")
    if version is None:
        return []  # the CRD finding says it
    name = options.training_runtime
    runtime, unseen = _read(api, "runtime", f"ClusterTrainingRuntime {name}",
                            f"/apis/trainer.kubeflow.org/{version}/clustertrainingruntimes/{name}",
                            missing=f"ClusterTrainingRuntime {name} does not exist; a cluster admin applies "
                                    "k8s/trainer-v2/cluster (it holds runtime.yaml), or pass --training-runtime "
                                    "NAME of one that exists")
    if unseen:
        return unseen
    problems = runtime_rule_problems(runtime)
    if problems:
        return [Finding("runtime", "missing", f"ClusterTrainingRuntime {name} lacks our exit-code rules: "
                                              f"{'; '.join(problems)}; apply k8s/trainer-v2/cluster/runtime.yaml "
                                              "(exit 1-127 permanent, 128-255 restart the group)")]
    return [Finding("runtime", "ok", f"ClusterTrainingRuntime {name} fails jobs on exit codes "
                                     f"{_ranges(PERMANENT_EXIT_CODES)} and restarts the group on the others")]


def _may(api: _Api, verb: str, group: str, resource: str, namespace: str | None, name: str = "") -> bool:
    attributes = {"verb": verb, "group": group, "resource": resource.split("/")[0]}
    if "/" in resource:
        attributes["subresource"] = resource.split("/", 1)[1]
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = api.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                      {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                       "spec": {"resourceAttributes": attributes}})
    return bool((review.get("status") or {}).get("allowed"))


def rights(options: PreflightOptions) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str, bool, str]]]:
    """What the launcher needs (verb, group, resource) in the namespace to run jobs, and what it reads to explain
    and check (verb, group, resource, namespaced, what): k8s/ access grants both (tests/k8s checks it)."""
    group, plural, _ = JOB_API[options.backend]
    needed = [(verb, group, plural) for verb in ("create", "get", "delete")]
    needed += [("list", "", "pods"), ("get", "", "pods/log")]
    optional = [("list", "", "events", True, "why a job's pods do not run"),
                ("list", "", "nodes", False, "the GPU capacity of the nodes")]
    if options.s3_secret:
        optional.append(("get", "", "secrets", True, f"Secret {options.s3_secret}"))
    if options.queue:
        optional += [("get", KUEUE_GROUP, "localqueues", True, f"LocalQueue {options.queue}"),
                     ("list", KUEUE_GROUP, "workloads", True, "the Kueue admission of a job")]
    if options.backend == "trainjob":
        optional.append(("get", "trainer.kubeflow.org", "clustertrainingruntimes", False,
                         f"ClusterTrainingRuntime {options.training_runtime}"))
    return needed, optional


def _check_rbac(api: _Api, options: PreflightOptions) -> list[Finding]:
    _, plural, folder = JOB_API[options.backend]
    ns = options.namespace
    needed, optional = rights(options)
    try:
        denied = [f"{verb} {resource}" + (f".{g}" if g else "") for verb, g, resource in needed
                  if not _may(api, verb, g, resource, ns)]
        unseen = [f"{what} ({verb} {resource})" for verb, g, resource, namespaced, what in optional
                  if not _may(api, verb, g, resource, ns if namespaced else None,
                              name=options.s3_secret if resource == "secrets" else "")]
    except k8s.ApiException as error:
        return [_forbidden_or_error("rbac", "the launcher's rights (SelfSubjectAccessReview)", error)]
    findings = []
    if denied:
        findings.append(Finding("rbac", "forbidden", f"the launcher may not {', '.join(denied)} in namespace {ns}; "
                                                     f"apply {folder} and k8s/kubeflow-profile there (the Role, "
                                                     "bound to Kubeflow Pipelines' step accounts), or run the "
                                                     "steps as unmix-swav-launcher"))
    else:
        findings.append(Finding("rbac", "ok", f"the launcher may create, get and delete {plural} and read pods and "
                                              f"their logs in {ns}"))
    for item in unseen:
        findings.append(Finding("rbac", "unverified", f"not allowed to check {item}; the Role in {folder} and "
                                                      "the ClusterRole in k8s/cluster-read grant it"))
    return findings


def _check_secret(api: _Api, options: PreflightOptions) -> list[Finding]:
    if not options.s3_secret:
        return [Finding("secret", "ok", "no S3 Secret named: the pods' own identity must reach the store")]
    name, required = options.s3_secret, S3_SECRET_KEYS[:2]
    secret, unseen = _read(api, "secret", f"Secret {name}", f"/api/v1/namespaces/{options.namespace}/secrets/{name}",
                           missing=f"Secret {name} does not exist in namespace {options.namespace}; create it as "
                                   "k8s/s3-secret.template.yaml says, pass --s3-secret NAME, or "
                                   "--s3-secret '' when the pods' identity (IRSA) reaches the store")
    if unseen:
        return unseen
    keys = set((secret.get("data") or {}) | (secret.get("stringData") or {}))
    lacking = [key for key in required if key not in keys]
    if lacking:
        return [Finding("secret", "missing", f"Secret {options.namespace}/{name} lacks {', '.join(lacking)}; add "
                                             "them (kubectl create secret generic ... --from-literal=KEY=...)")]
    endpoint = " and AWS_ENDPOINT_URL" if S3_SECRET_KEYS[2] in keys else ""
    return [Finding("secret", "ok", f"Secret {options.namespace}/{name} holds {', '.join(required)}{endpoint}")]


def _check_queue(api: _Api, options: PreflightOptions) -> list[Finding]:
    version = api.version_of(KUEUE_GROUP, "localqueues")
    if not options.queue or version is None:
        return []
    queue, unseen = _read(api, "queue", f"LocalQueue {options.queue}",
                          f"/apis/{KUEUE_GROUP}/{version}/namespaces/{options.namespace}/localqueues/{options.queue}",
                          missing=f"LocalQueue {options.queue} does not exist in namespace {options.namespace} (a "
                                  "job would wait forever); create it or fix --queue (kubectl get localqueues -A)")
    if unseen:
        return unseen
    inactive = [c for c in (queue.get("status") or {}).get("conditions") or []
                if c.get("type") == "Active" and c.get("status") == "False"]
    if inactive:
        return [Finding("queue", "missing", f"LocalQueue {options.queue} is not active: {inactive[0].get('message')};"
                                            " ask the cluster admin to fix its ClusterQueue")]
    return [Finding("queue", "ok", f"LocalQueue {options.namespace}/{options.queue} exists (ClusterQueue "
                                   f"{(queue.get('spec') or {}).get('clusterQueue', '?')})")]


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True  # PreferNoSchedule only steers
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint.get("key")):
            return True
        if toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def _gpus(node: dict[str, Any]) -> int:
    try:
        return int(str(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")))
    except ValueError:
        return 0


def _check_gpus(api: _Api, options: PreflightOptions) -> list[Finding]:
    wanted = options.gpus_per_node
    if wanted <= 0:
        return [Finding("gpu", "ok", "CPU job (gpus_per_node 0): no GPU capacity needed")]
    default_selector, default_tolerations = default_placement(wanted)
    selector = default_selector if options.node_selector is None else options.node_selector
    tolerations = default_tolerations if options.tolerations is None else options.tolerations
    listed, unseen = _read(api, "gpu", f"the nodes' {GPU_RESOURCE}", "/api/v1/nodes")
    if unseen:
        return unseen
    nodes = listed.get("items", [])
    fitting, best = [], 0
    for node in nodes:
        metadata, spec = node.get("metadata") or {}, node.get("spec") or {}
        labels = metadata.get("labels") or {}
        if spec.get("unschedulable") or any(labels.get(k) != v for k, v in selector.items()):
            continue
        if not all(_tolerated(taint, tolerations) for taint in spec.get("taints") or []):
            continue
        best = max(best, _gpus(node))
        if _gpus(node) >= wanted:
            fitting.append(metadata.get("name", "?"))
    where = f"node selector {selector or '{}'} and tolerations {[t.get('key') for t in tolerations]}"
    if not fitting:
        return [Finding("gpu", "missing", f"no schedulable node offers {GPU_RESOURCE} >= {wanted} under {where} "
                                          f"(the most is {best} of {len(nodes)} node(s)); lower --gpus-per-node, "
                                          "or fix the node selector / tolerations to match the GPU pool")]
    return [Finding("gpu", "ok", f"{len(fitting)} node(s) offer {GPU_RESOURCE} >= {wanted} under {where}")]


def preflight_client(api_client: k8s.ApiClient) -> k8s.ApiClient:
    """A client with the same credentials and host that never retries a request (urllib3 would, 3 times)."""
    configuration = copy.copy(api_client.configuration)
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def run_checks(options: PreflightOptions, api_client: k8s.ApiClient | None = None) -> list[Finding]:
    """Every check of this module, in order; stops after the first if the API does not answer. Never raises
    for what the cluster answers (a UserError only for options that are not valid)."""
    if options.backend not in BACKENDS:
        raise UserError(f"backend {options.backend!r} is not known; use one of {', '.join(BACKENDS)}")
    if options.gpus_per_node < 0 or not options.request_timeout_s > 0:
        raise UserError("gpus_per_node must be >= 0 and the request timeout > 0")
    api = _Api(preflight_client(api_client or load_api_client()), options.request_timeout_s)
    try:
        first = _check_api(api)
        if first.failed:
            return [first]
        findings = [first, *_check_crds(api, options)]
        if options.backend == "trainjob":
            findings += _check_runtime(api, options)
        for check in (_check_rbac, _check_secret, _check_queue, _check_gpus):
            findings += check(api, options)
    except _Unreachable as error:  # it answered, then stopped: say so instead of a traceback
        return [Finding("api", "missing", f"the Kubernetes API stopped answering during the checks ({error})")]
    except k8s.ApiException as error:
        return [Finding("api", "missing", f"the Kubernetes API failed a check ({error.status}: {message_of(error)});"
                                          " run the preflight again")]
    return findings
