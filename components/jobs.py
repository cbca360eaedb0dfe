"""What the launching components call at run time: each distributed step's trainer flags, its JobSpec, the
fail-fast checks and the launch itself.

`pretrain_argv` and `evaluation_argv` build the trainer's argv, so that the up-front check step and the
launching steps check exactly the flags the jobs will run with. The job options are the pipeline's parameters, passed
through unchanged; their defaults live in launch.spec.JobSpec.
"""

from __future__ import annotations

import sys
from typing import Any

from components.runtime import log_metrics
from launch.run import default_namespace, run_job
from launch.spec import JobSpec, job_name
from trainer import storage
from trainer.errors import UserError
from trainer.run.boundary import one_line, run_guarded
from trainer.run.metrics import read_document

# Where each step writes under the run's root; the semi-supervised step runs once per label percentage.
DUMP_FOLDERS = {"pretrain": "pretrain", "eval-knn": "eval-knn", "eval-linear": "eval-linear", "detr": "detr"}
BASELINE_SUFFIX = "-random"  # the random-init twin of an evaluation writes beside it
EVALUATIONS = ("eval-knn", "eval-linear", "eval-semisup", "detr")  # what the `evaluate` component runs
# Job options every launching component takes (pipeline parameters), beside its own nodes and GPUs.
JOB_OPTIONS = ("image", "namespace", "cpu_per_node", "memory_per_node", "shm_size", "node_selector",
               "tolerations", "s3_secret_name", "queue", "priority_class", "max_restarts", "backend",
               "training_runtime")


def dump_url(run_root: str, command: str, labels_percent: int | None = None, baseline: bool = False) -> str:
    folder = f"eval-semisup-{labels_percent}pct" if command == "eval-semisup" else DUMP_FOLDERS[command]
    return storage.join(run_root, folder + (BASELINE_SUFFIX if baseline else ""))


def pretrain_argv(images_url: str, dump: str, arch: str, preset: str, config_url: str, extra: list[Any],
                  knn_monitor: bool) -> list[str]:
    argv = ["--data_path", images_url, "--dump_path", dump, "--arch", arch]
    if preset:
        argv += ["--preset", preset]
    if config_url:
        argv += ["--config", config_url]
    if knn_monitor:  # weighted kNN on the staged val split every --knn_freq epochs, into metrics.jsonl
        argv += ["--knn_eval_path", images_url]
    return argv + [str(arg) for arg in extra]


def evaluation_argv(command: str, data_url: str, backbone_url: str, dump: str, arch: str, extra: list[Any],
                    labels_percent: int | None = None) -> list[str]:
    """An evaluation's flags: its data (images, or the COCO-format set for DETR), the trunk, the output."""
    data_flag = "--coco_path" if command == "detr" else "--data_path"
    argv = [data_flag, data_url, "--pretrained", backbone_url, "--dump_path", dump, "--arch", arch]
    if command == "eval-semisup":
        argv += ["--labels_perc", str(labels_percent)]
    return argv + [str(arg) for arg in extra]


def job_spec(command: str, dump: str, argv: list[str], launcher: str, num_nodes: int, gpus_per_node: int,
             **options: Any) -> JobSpec:
    """The JobSpec of one step; its name follows from the command and the dump path, so that a retried step
    finds its own job. An empty namespace means the step pod's own (or `local` for local runs)."""
    unknown = set(options) - set(JOB_OPTIONS)
    if unknown:
        raise TypeError(f"unknown job options {sorted(unknown)}")
    chosen = {key: value for key, value in options.items() if value is not None}
    if not chosen.get("namespace"):
        chosen["namespace"] = "local" if launcher == "local" else default_namespace()
    chosen["node_selector"] = dict(chosen.get("node_selector") or {})
    chosen["tolerations"] = list(chosen.get("tolerations") or [])
    return JobSpec(command=command, name=job_name(command, dump), trainer_args=tuple(map(str, argv)),
                   num_nodes=int(num_nodes), gpus_per_node=int(gpus_per_node), **chosen)


def launch_step(spec: JobSpec, launcher: str, timeout_hours: float) -> None:
    """Check and run the job behind the trainer's error boundary: a failure ends the step with one line and the
    exit code (the trainer's own, when the job reports it)."""
    code = run_guarded(lambda: run_job(spec, launcher, timeout_s=float(timeout_hours) * 3600))
    if code:
        raise SystemExit(code)


def check_steps(checks: list[tuple[str, JobSpec]]) -> None:
    """Every step's flags with the trainer's own checks before anything starts: one line per bad step, then
    the step ends with exit 2. `checks` holds (what the user calls the step, its JobSpec)."""
    from launch.run import check

    failed = []

    def _check_all() -> None:
        for label, spec in checks:
            try:
                check(spec)
            except UserError as error:
                print(f"error: {label} ({spec.command}): {one_line(error)}", file=sys.stderr, flush=True)
                failed.append(label)

    code = run_guarded(_check_all)
    if code:
        raise SystemExit(code)
    if failed:
        print(f"error: bad flags in {len(failed)} step(s) ({', '.join(failed)}); nothing was started",
              file=sys.stderr, flush=True)
        raise SystemExit(2)


def run_evaluation(command: str, run_root: str, data_url: str, backbone_url: str, arch: str, extra: list[Any],
                   labels_percent: int | None, launcher: str, num_nodes: int, gpus_per_node: int,
                   timeout_hours: float, baselines: bool, metrics: Any, **options: Any) -> tuple[str, str]:
    """An evaluation's job on the pretrained trunk, then, with `baselines`, the same job on a random-init trunk
    (`--pretrained random`, seeded) beside it; the pretrained run's numbers go into the kfp `metrics`
    artifact. The metrics.json URLs of both ("" when there is no twin)."""
    if command not in EVALUATIONS:
        raise UserError(f"{command!r} is not an evaluation; use one of {', '.join(EVALUATIONS)}")
    urls = []
    for baseline in ([False, True] if baselines else [False]):
        dump = dump_url(run_root, command, labels_percent, baseline)
        argv = evaluation_argv(command, data_url, "random" if baseline else backbone_url, dump, arch, extra,
                               labels_percent)
        launch_step(job_spec(command, dump, argv, launcher, num_nodes, gpus_per_node, **options), launcher,
                    timeout_hours)
        urls.append(storage.join(dump, "metrics.json"))
    pretrained_dump = dump_url(run_root, command, labels_percent)
    log_metrics(metrics, read_document(pretrained_dump), pretrained_dump)
    return urls[0], urls[1] if baselines else ""
