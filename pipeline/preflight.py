"""`python -m pipeline preflight`: check the cluster before a run, with the launcher's own credentials.

One line per check (launch.preflight): `ok:`, `missing:` (exit 2) or `warning:` (not allowed to check it).
"""

from __future__ import annotations

import json

from launch.preflight import PreflightOptions, run_checks
from launch.spec import BACKENDS, DEFAULT_S3_SECRET, DEFAULT_TRAINING_RUNTIME, JobSpec
from trainer.errors import UserError

_DEFAULTS = PreflightOptions()


def _json_or_none(text: str | None, what: str):
    """--node-selector (an object of strings) or --tolerations (a list of objects) from JSON."""
    if text is None:
        return None
    example = '\'{"pool": "a100"}\'' if what == "node-selector" else '\'[{"key": "pool", "operator": "Exists"}]\''
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if what == "node-selector" and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    if what == "tolerations" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    kind = "object of strings" if what == "node-selector" else "list of objects"
    raise UserError(f"--{what} {text!r} is not a JSON {kind}; e.g. --{what} {example}")


def add_arguments(parser) -> None:
    parser.add_argument("--namespace", default=None,
                        help="the jobs' namespace (default: the pod's, else the kubeconfig context's, else default)")
    parser.add_argument("--backend", choices=BACKENDS, default=JobSpec.__dataclass_fields__["job_backend"].default,
                        help="pytorchjob (Training Operator v1) or trainjob (Kubeflow Trainer v2)")
    parser.add_argument("--training-runtime", default=DEFAULT_TRAINING_RUNTIME,
                        help="ClusterTrainingRuntime (trainjob)")
    parser.add_argument("--queue", default="", help="Kueue LocalQueue the jobs are labelled with")
    parser.add_argument("--s3-secret", default=DEFAULT_S3_SECRET,
                        help="Secret with the S3 keys ('' when the pods' identity reaches the store)")
    parser.add_argument("--gpus-per-node", type=int, default=_DEFAULTS.gpus_per_node,
                        help="GPUs one node of a job takes (0: CPU job)")
    parser.add_argument("--node-selector", default=None, help="JSON object (default: the GPU pool's)")
    parser.add_argument("--tolerations", default=None, help="JSON list (default: the GPU pool's)")
    parser.add_argument("--request-timeout", type=float, default=_DEFAULTS.request_timeout_s,
                        help="seconds to connect and to read, per API call (no retries)")
    parser.add_argument("--strict", action="store_true", help="also fail on what the launcher may not check")


def run(args) -> None:
    from launch.run import default_namespace

    options = PreflightOptions(
        namespace=args.namespace or default_namespace(), backend=args.backend, training_runtime=args.training_runtime,
        queue=args.queue, s3_secret=args.s3_secret, gpus_per_node=args.gpus_per_node,
        node_selector=_json_or_none(args.node_selector, "node-selector"),
        tolerations=_json_or_none(args.tolerations, "tolerations"), request_timeout_s=args.request_timeout)
    findings = run_checks(options)
    for finding in findings:
        print(finding.line(), flush=True)
    failed = [f for f in findings if f.failed or (args.strict and f.status == "unverified")]
    if failed:
        raise UserError(f"preflight: {len(failed)} of {len(findings)} check(s) failed in namespace "
                        f"{options.namespace}: {', '.join(sorted({f.check for f in failed}))} (fixes above)")
    print(f"preflight: the cluster is ready for {options.backend} jobs in namespace {options.namespace}")
