"""`python -m pipeline job-manifest STEP [options] -- TRAINER_ARGS...`: the job the launcher would create, as YAML.

For users who `kubectl apply` jobs without Kubeflow Pipelines. STEP is a distributed trainer command
(pretrain, eval-knn, eval-linear, eval-semisup, detr); `--backend` picks a TrainJob (Kubeflow Trainer v2, on
`--training-runtime`, the default) or a PyTorchJob (Training Operator v1 clusters). TRAINER_ARGS are its flags,
checked first with the trainer's own checks for world size = nodes x processes per node (`--no-check` for
templates whose URLs do not exist yet). The defaults are the pipeline's (launch.spec.JobSpec). The manifests
under k8s/ are this command's output; their first line says how each was made (a test keeps them in sync).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from launch.backends import build_job, to_manifest
from launch.spec import BACKENDS, COMMANDS, DEFAULT_S3_SECRET, JobSpec, default_placement, flag_value, job_name
from trainer.errors import UserError

PASSTHROUGH = "trainer_args"  # python -m pipeline hands everything after `--` to args.trainer_args
DEFAULTS = {f.name: f.default for f in fields(JobSpec) if isinstance(f.default, (int, str))}


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _toleration(text: str) -> dict[str, str]:
    """KEY[=VALUE]:EFFECT, as kubectl taint writes taints; Exists without a value, Equal with one."""
    key_value, sep, effect = text.rpartition(":")
    if not sep or not key_value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY[=VALUE]:EFFECT, e.g. nvidia.com/gpu:NoSchedule")
    key, has_value, value = key_value.partition("=")
    toleration = {"key": key, "operator": "Equal" if has_value else "Exists", "effect": effect}
    return {**toleration, "value": value} if has_value else toleration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", choices=COMMANDS, help="the trainer command the job runs; its flags follow `--`")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULTS["job_backend"],
                        help="trainjob: Kubeflow Trainer v2 (default); pytorchjob: Training Operator v1 clusters")
    parser.add_argument("--training-runtime", default=DEFAULTS["training_runtime"],
                        help="the ClusterTrainingRuntime a TrainJob references (k8s/trainer-v2/cluster/runtime.yaml's)")
    parser.add_argument("--name", default=None, help="job name (default: derived from --dump_path)")
    parser.add_argument("--namespace", default="",
                        help="metadata.namespace (default: none, so that `kubectl apply -n NS` places the job)")
    parser.add_argument("--image", default=None, help="trainer image (default: the pipeline's)")
    parser.add_argument("--num-nodes", type=int, default=DEFAULTS["num_nodes"])
    parser.add_argument("--gpus-per-node", type=int, default=DEFAULTS["gpus_per_node"], help="0: CPU nodes")
    parser.add_argument("--cpu-per-node", default=DEFAULTS["cpu_per_node"])
    parser.add_argument("--memory-per-node", default=DEFAULTS["memory_per_node"])
    parser.add_argument("--shm-size", default=DEFAULTS["shm_size"])
    parser.add_argument("--s3-secret", default=DEFAULT_S3_SECRET,
                        help="Secret with the AWS_* keys ('' for none: the pod's identity, see --service-account)")
    parser.add_argument("--service-account", default=DEFAULTS["service_account"],
                        help="the job pods' ServiceAccount (IRSA / workload identity: its annotation names the role)")
    parser.add_argument("--image-pull-secret", action="append", default=[], metavar="NAME",
                        help="repeatable: a dockerconfigjson Secret for a private registry")
    parser.add_argument("--pod-label", type=_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="repeatable: a label on every job pod")
    parser.add_argument("--pod-annotation", type=_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="repeatable: an annotation on every job pod (default sidecar.istio.io/inject=false)")
    parser.add_argument("--node-selector", type=_pair, action="append", default=None, metavar="KEY=VALUE",
                        help="repeatable; default: the GPU pool's for GPU jobs, none for CPU jobs")
    parser.add_argument("--toleration", type=_toleration, action="append", default=None,
                        metavar="KEY[=VALUE]:EFFECT", help="repeatable; default as for --node-selector")
    parser.add_argument("--queue", default=DEFAULTS["queue"],
                        help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name) and the gang scheduler's queue")
    parser.add_argument("--priority-class", default=DEFAULTS["priority_class"])
    parser.add_argument("--max-restarts", type=int, default=DEFAULTS["max_restarts"])
    parser.add_argument("--no-check", action="store_true",
                        help="skip the trainer's checks (for templates whose URLs do not exist yet)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write FILE (headed by the command that makes it) instead of printing")


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    from components.image import TRAINER_IMAGE

    trainer_args = tuple(args.trainer_args)
    name = args.name
    if name is None:
        dump = flag_value(trainer_args, "--dump_path")
        if dump is None:
            raise UserError("pass --name, or --dump_path among the trainer's flags (the job's name derives from it)")
        name = job_name(args.step, dump)
    selector, tolerations = default_placement(args.gpus_per_node)
    return JobSpec(command=args.step, name=name, image=args.image or TRAINER_IMAGE, trainer_args=trainer_args,
                   namespace=args.namespace, num_nodes=args.num_nodes, gpus_per_node=args.gpus_per_node,
                   cpu_per_node=args.cpu_per_node, memory_per_node=args.memory_per_node, shm_size=args.shm_size,
                   s3_secret_name=args.s3_secret,
                   node_selector=dict(args.node_selector) if args.node_selector is not None else selector,
                   tolerations=args.toleration if args.toleration is not None else tolerations,
                   queue=args.queue, priority_class=args.priority_class, max_restarts=args.max_restarts,
                   job_backend=args.backend, training_runtime=args.training_runtime,
                   service_account=args.service_account, image_pull_secrets=list(args.image_pull_secret),
                   pod_labels=dict(args.pod_label), pod_annotations=dict(args.pod_annotation))


def render_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(to_manifest(build_job(spec)), sort_keys=True, default_flow_style=False)


HEADER = "# Made by `python -m pipeline job-manifest` (tests/k8s keep it current). To make it again:\n"


def command_header(argv: list[str], width: int = 110) -> str:
    """`argv` (job-manifest's own flags, `--`, the trainer's) as comment lines that a shell could run."""
    lines, line = [], "#   python -m pipeline job-manifest"
    for token in map(shlex.quote, argv):
        if len(line) + 1 + len(token) > width:
            lines.append(line + " \\")
            line = "#    "
        line += " " + token
    return HEADER + "\n".join([*lines, line]) + "\n"


def header_command(text: str) -> list[str]:
    """The job-manifest argv a file's header records (the inverse of `command_header`)."""
    body = text.split(HEADER, 1)[1]
    lines = [line[1:].rstrip().removesuffix("\\") for line in body.splitlines() if line.startswith("#")]
    return shlex.split(" ".join(lines))[4:]


def recorded_argv(args: argparse.Namespace) -> list[str]:
    """The command line that makes the same manifest, for the header: this one without --output."""
    given = getattr(args, "command_line", [])
    flags = given[:given.index("--")] if "--" in given else given
    kept, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "--output":
            skip = True
        elif not flag.startswith("--output="):
            kept.append(flag)
    return [*kept, "--", *args.trainer_args]


def run(args: argparse.Namespace) -> None:
    spec = spec_from_args(args)
    spec.validate()  # the cluster values first, with --no-check too: kubectl apply would refuse them later
    if not args.no_check:
        from launch.run import check

        check(spec, out=sys.stderr)
    text = render_yaml(spec)
    if args.output is None:
        sys.stdout.write(text)
        return
    args.output.write_text(command_header(recorded_argv(args)) + text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
