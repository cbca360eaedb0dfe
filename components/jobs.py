"""What the launching components and the check step call at run time: each distributed step's trainer flags, its
JobSpec, the fail-fast checks and the launch itself.

The check step and the launching steps build their JobSpecs with the same functions from the same values
(`pretrain_spec`, `evaluation_spec`), so that the check step checks exactly the jobs the run will create: the
flags, and the job options too.

The job options are the JobSpec fields a run sets once for all its distributed steps (`JOB_OPTIONS`, derived from
launch.spec.JobSpec; their defaults live there). Each is a pipeline parameter and an input of every launching
component under its JobSpec name, except the placement, which the pipeline names for the GPU pool
(`PIPELINE_PARAMETERS`). Components hand their inputs over whole (`job_options(locals())`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from components.runtime import check_storage_root, log_metrics, run_step, step_url
from components.steps import PIPELINE_STEPS, evaluation_row
from launch.errors import JobFailed
from launch.failures import check_earlier_failure, record_failure
from launch.run import default_namespace, run_job
from launch.spec import JobSpec, flag_value, job_name
from trainer import steps as catalogue
from trainer import storage
from trainer.data.preflight import check_images
from trainer.errors import UserError
from trainer.run.boundary import one_line
from trainer.run.metrics import read_document

# JobSpec fields each step sets itself, and those a run leaves at JobSpec's defaults: the rest are job options.
PER_STEP = ("command", "name", "trainer_args", "num_nodes", "gpus_per_node")
NOT_OPTIONS = ("shard_cache_size", "ttl_seconds_after_finished", "labels")
JOB_OPTIONS = tuple(f.name for f in fields(JobSpec) if f.name not in PER_STEP + NOT_OPTIONS)
# The pipeline parameter of each job option: its own name, but the placement is the GPU pool's.
PIPELINE_PARAMETERS = {option: {"node_selector": "gpu_node_selector", "tolerations": "gpu_tolerations"}.get(option,
                                                                                                            option)
                       for option in JOB_OPTIONS}


def job_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The job options among a component's inputs (its `locals()`), by JobSpec field name."""
    return {option: values[option] for option in JOB_OPTIONS}


def dump_url(run_root: str, key: str, baseline: bool = False) -> str:
    """Where the step of catalogue key `key` writes under the run's root (its twin: beside it)."""
    return storage.join(run_root, catalogue.step(key).key + (catalogue.BASELINE_SUFFIX if baseline else ""))


def pretrain_argv(images_url: str, dump: str, arch: str, preset: str, config_url: str, extra: list[Any],
                  knn_monitor: bool) -> list[str]:
    argv = [catalogue.DATA_FLAGS["images"], images_url, "--dump_path", dump, "--arch", arch]
    if preset:
        argv += ["--preset", preset]
    if config_url:
        argv += ["--config", config_url]
    if knn_monitor:  # weighted kNN on the staged val split every --knn_freq epochs, into metrics.jsonl
        argv += ["--knn_eval_path", images_url]
    return argv + [str(arg) for arg in extra]


def evaluation_argv(key: str, data_url: str, backbone_url: str, dump: str, arch: str, extra: list[Any]) -> list[str]:
    """An evaluation's flags: its data (images, or the COCO-format set for DETR), the trunk, the output, its label
    share; the user's flags last."""
    row = catalogue.step(key)
    argv = [catalogue.DATA_FLAGS[row.data], data_url, "--pretrained", backbone_url, "--dump_path", dump,
            "--arch", arch]
    if row.labels_percent is not None:
        argv += ["--labels_perc", str(row.labels_percent)]
    return argv + [str(arg) for arg in extra]


def job_spec(command: str, dump: str, argv: list[str], launcher: str, num_nodes: int, gpus_per_node: int,
             options: Mapping[str, Any]) -> JobSpec:
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
    for name, kind in (("image_pull_secrets", list), ("pod_labels", dict), ("pod_annotations", dict)):
        if name in chosen:
            chosen[name] = kind(chosen[name] or kind())
    return JobSpec(command=command, name=job_name(command, dump), trainer_args=tuple(map(str, argv)),
                   num_nodes=int(num_nodes), gpus_per_node=int(gpus_per_node), **chosen)


def pretrain_spec(run_root: str, images_url: str, arch: str, preset: str, config_url: str, extra: list[Any],
                  knn_monitor: bool, launcher: str, num_nodes: int, gpus_per_node: int,
                  options: Mapping[str, Any]) -> JobSpec:
    dump = dump_url(run_root, "pretrain")
    return job_spec("pretrain", dump, pretrain_argv(images_url, dump, arch, preset, config_url, extra, knn_monitor),
                    launcher, num_nodes, gpus_per_node, options)


def evaluation_spec(key: str, run_root: str, data_url: str, backbone_url: str, arch: str, extra: list[Any],
                    launcher: str, num_nodes: int, gpus_per_node: int, options: Mapping[str, Any],
                    baseline: bool = False) -> JobSpec:
    """An evaluation's job; its random-init twin (`baseline`) scores `--pretrained random` beside it."""
    dump = dump_url(run_root, key, baseline)
    argv = evaluation_argv(key, data_url, "random" if baseline else backbone_url, dump, arch, extra)
    return job_spec(catalogue.step(key).command, dump, argv, launcher, num_nodes, gpus_per_node, options)


def launch_step(spec: JobSpec, launcher: str, timeout_hours: float) -> None:
    """Check and run the job behind the trainer's error boundary: a failure ends the step with one line and the
    exit code (the trainer's own, when the job reports it). A permanent failure is recorded for the step's
    retries, and a retry of a job that failed permanently fails at once with the same line (launch.failures)."""

    def _launch() -> None:
        check_earlier_failure(spec)
        try:
            run_job(spec, launcher, timeout_s=float(timeout_hours) * 3600)
        except JobFailed as failure:
            record_failure(spec, failure)
            raise

    run_step(_launch)


def check_data(key: str, spec: JobSpec) -> list[str]:
    """What the step of catalogue key `key` reads from its images, as its flags say (the user's included): the
    splits, a labelled image per class at its label share, the kNN monitor's splits (trainer.data.preflight).
    Raises UserError for the first problem; returns notes on what was not checked."""
    row, args = catalogue.step(key), list(spec.trainer_args)
    notes = []
    data = flag_value(args, catalogue.DATA_FLAGS["images"])
    if row.data == "images" and data:
        percent = None if flag_value(args, "--subset_file") else flag_value(args, "--labels_perc")
        notes += check_images(data, row.splits, int(percent) if percent else None)
    monitor = flag_value(args, "--knn_eval_path") if row.command == "pretrain" else None
    if monitor:
        try:
            notes += check_images(monitor, catalogue.MONITOR_SPLITS)
        except UserError as error:
            raise UserError(f"the kNN monitor (--knn_eval_path, knn_monitor): {one_line(error)}") from None
    return notes


def check_steps(checks: list[tuple[str, JobSpec]], data: bool = False) -> None:
    """Every step's job with the launchers' own check (the JobSpec, then the trainer's flags) before anything
    starts, and with `data` what it reads from its data (`check_data`; the steps are then the catalogue's, by
    name): one line per bad step, then the step ends with exit 2. `checks` holds (the step's name, its JobSpec)."""
    from launch.run import check

    keys = {row.name: row.key for row in catalogue.STEPS}
    failed: dict[str, list[str]] = {"flags": [], "data": []}

    def _check_all() -> None:
        for label, spec in checks:
            kind = "flags"
            try:
                check(spec)
                kind = "data"
                for note in check_data(keys[label], spec) if data else []:
                    print(f"[check] {label}: {note}", flush=True)
            except UserError as error:
                print(f"error: {label} ({spec.command}): {one_line(error)}", file=sys.stderr, flush=True)
                failed[kind].append(label)

    run_step(_check_all)
    for kind, what in (("flags", "bad flags"), ("data", "data the step cannot run on")):
        if failed[kind]:
            print(f"error: {what} in {len(failed[kind])} step(s) ({', '.join(failed[kind])}); nothing was started",
                  file=sys.stderr, flush=True)
    if failed["flags"] or failed["data"]:
        raise SystemExit(2)


def check_run(inputs: Mapping[str, Any]) -> None:
    """The check step: every step's JobSpec as its launching step will build it (the run's root, flags, sizes and
    job options), checked, and what each step reads from the data (`check_data`). `inputs` are the check
    component's (its `locals()`); the evaluations are checked without --pretrained, which exists only after
    pretraining (their launching step checks it)."""
    run_step(lambda: check_storage_root(inputs["storage_root"]))
    run_root = step_url(inputs["storage_root"], inputs["run_id"])
    options, launcher = job_options(inputs), inputs["launcher"]
    data = {"images": inputs["images_url"], "detection": inputs["detection_url"]}
    checks = []
    for row in PIPELINE_STEPS:
        size = (launcher, inputs[row.num_nodes], inputs[row.gpus_per_node], options)
        if row.step.evaluation:
            spec = evaluation_spec(row.key, run_root, data[row.step.data], "", inputs["arch"], inputs[row.args],
                                   *size)
        else:
            spec = pretrain_spec(run_root, data[row.step.data], inputs["arch"], inputs["preset"],
                                 inputs["config_url"], inputs[row.args], inputs["knn_monitor"], *size)
        checks.append((row.step.name, spec))
    check_steps(checks, data=True)
    pretraining = next(spec for _, spec in checks if spec.command == "pretrain")
    run_step(lambda: plan_pretraining(pretraining, inputs["gpu_type"]))
    if launcher == "kubernetes":
        run_step(lambda: check_cluster(pretraining))


def plan_pretraining(spec: JobSpec, gpu_type: str) -> None:
    """The plan of the pretraining job for its nodes x GPUs of kind `gpu_type` (trainer.plan), printed; UserError
    when a GPU cannot hold its per-GPU batch, before any GPU starts."""
    from trainer import config
    from trainer.cli import build_parser
    from trainer.plan.planner import plan_for

    if spec.gpus_per_node == 0:
        print("[check] plan: CPU-only nodes, no GPU memory to plan", flush=True)
        return
    args = build_parser("pretrain").parse_args(list(spec.trainer_args))
    plan = plan_for(config.resolve(args), spec.num_nodes, spec.gpus_per_node, gpu_type, config.given_flags(args))
    print(plan.table(), flush=True)
    if not plan.memory.fits:
        raise UserError(f"pretraining does not fit on {gpu_type}: {plan.memory.gib_per_gpu:.1f} GiB per GPU of "
                        f"{plan.memory.gpu_gib:.0f}; use --batch_size {plan.memory.largest_batch} or less in "
                        "pretrain_args, or set gpu_type to the GPUs the run gets; nothing was started")


def check_cluster(spec: JobSpec) -> None:
    """What the job needs of the cluster (launch.preflight: CRDs, runtime, RBAC, Secret, queue, GPUs), one line
    each; UserError naming the missing pieces."""
    from launch.preflight import PreflightOptions, run_checks

    findings = run_checks(PreflightOptions.from_spec(spec))
    for finding in findings:
        print(f"[check] cluster {finding.line()}", flush=True)
    missing = [finding.check for finding in findings if finding.failed]
    if missing:
        raise UserError(f"the cluster lacks what the jobs need ({', '.join(missing)}); see the lines above and "
                        "docs/cluster-preflight.md; nothing was started")


def run_evaluation(command: str, labels_percent: int, run_root: str, data_url: str, backbone_url: str, arch: str,
                   extra: list[Any], launcher: str, num_nodes: int, gpus_per_node: int, timeout_hours: float,
                   baselines: bool, metrics: Any, options: Mapping[str, Any]) -> tuple[str, str]:
    """An evaluation's job on the pretrained trunk, then, with `baselines`, the same job on a random-init trunk
    (`--pretrained random`, seeded) beside it; the pretrained run's numbers go into the kfp `metrics`
    artifact. The metrics.json URLs of both ("" when there is no twin)."""
    try:
        key = evaluation_row(command, labels_percent).key
    except ValueError as error:
        raise UserError(str(error)) from None
    urls = []
    for baseline in ([False, True] if baselines else [False]):
        spec = evaluation_spec(key, run_root, data_url, backbone_url, arch, extra, launcher, num_nodes,
                               gpus_per_node, options, baseline)
        launch_step(spec, launcher, timeout_hours)
        urls.append(storage.join(dump_url(run_root, key, baseline), "metrics.json"))
    pretrained_dump = dump_url(run_root, key)
    log_metrics(metrics, read_document(pretrained_dump), pretrained_dump)
    return urls[0], urls[1] if baselines else ""
