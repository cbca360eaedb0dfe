"""`python -m pipeline run-local`: the same pipeline function on kfp's local SubprocessRunner.

Every step runs as a subprocess of this interpreter (use_venv=False: the project's .venv), storage is
a local folder (or S3 when AWS_ENDPOINT_URL names an endpoint), data are the builtin generated sets,
and every distributed step runs its job's replicas here with torchrun, the env and restart policy the
cluster would give them (a TrainJob's by default, a PyTorchJob's with `--param job_backend=pytorchjob`).
`--param NAME=VALUE` (the `submit` syntax) sets any pipeline parameter. Steps are not retried here
(`without_retries`).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline.compile import check_parameters, parse_params
from trainer import storage
from trainer.errors import UserError

# Sizes that fit this repo's 2-core CI machine: `tiny` for the end-to-end test, `demo` for `make demo`.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "stage_args": ["--num_classes", "4", "--images_per_class", "12", "--val_images_per_class", "4",
                       "--image_size", "32", "--workers", "1"],
        "detection_options": {"train_images": 6, "val_images": 3, "image_size": 48},
        "pretrain_args": ["--epochs", "1", "--batch_size", "8", "--workers", "0", "--log_freq", "1"],
        "linear_args": ["--epochs", "1", "--batch_size", "16", "--workers", "0", "--image_size", "32"],
        "semisup_args": ["--epochs", "1", "--batch_size", "16", "--workers", "0", "--image_size", "32"],
        "knn_args": ["--image_size", "32", "--workers", "0"],
        "detr_args": ["--epochs", "1", "--batch_size", "2", "--image_size", "48", "--num_queries", "8",
                      "--hidden_dim", "32", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "64",
                      "--nheads", "2", "--workers", "0"],
        "num_nodes": 1,
        "knn_monitor": True,
    },
    "demo": {
        # 50 val images per class: 300 queries, so one image moves a top-1 by 0.3 points, not 0.8
        "stage_args": ["--num_classes", "6", "--images_per_class", "60", "--val_images_per_class", "50",
                       "--image_size", "32", "--workers", "2"],
        "detection_options": {"train_images": 48, "val_images": 12, "image_size": 64},
        # Measured with benchmarks/eval_acceptance.py (README, "Known limits"): 4 extra 16 px crops of 8-30% of
        # the image are what lets 20 epochs beat the random trunk (2 x 32 px alone: kNN -2 points after 60
        # epochs); lr 0.005 for the short schedule; 16 per rank x 2 ranks = global batch 32, as measured.
        "pretrain_args": ["--epochs", "20", "--batch_size", "16", "--nmb_crops", "2", "4", "--size_crops", "32", "16",
                          "--min_scale_crops", "0.3", "0.08", "--max_scale_crops", "1.0", "0.3", "--base_lr", "0.005",
                          "--workers", "0", "--log_freq", "5"],
        # The images' own size, as linear, semi-supervised and pretraining's kNN monitor use (eval-knn's default
        # 224 px upsamples a 32 px image 7x, which favours a random trunk: 85.8 vs 75.0 measured).
        "knn_args": ["--image_size", "32", "--workers", "0"],
        "linear_args": ["--epochs", "30", "--batch_size", "32", "--workers", "0", "--image_size", "32",
                        "--cached_features"],
        # Learning rates sized for 6 and 36 labelled images (the protocol's are for ImageNet's 12,811 / 128,116):
        # 0.005 / 0.05 made the loss jump 2.1 -> 11.3 (diverged); 0.0005 / 0.005 stays within 1.2x of its start.
        "semisup_args": ["--epochs", "20", "--batch_size", "32", "--workers", "0", "--image_size", "32",
                         "--lr", "0.0005", "--lr_last_layer", "0.005"],
        "detr_args": ["--epochs", "3", "--batch_size", "4", "--image_size", "64", "--num_queries", "10",
                      "--hidden_dim", "64", "--enc_layers", "2", "--dec_layers", "2", "--dim_feedforward", "128",
                      "--nheads", "4", "--workers", "0"],
        "num_nodes": 2,
        "knn_monitor": True,
    },
}


def pipeline_arguments(size: str, storage_root: str, num_nodes: int | None = None,
                       params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pipeline parameters of a local run: CPU nodes, launcher=local, the demo recipe; `params` last."""
    chosen = SIZES[size]
    arguments = {
        "storage_root": storage_root,
        "data_source": "builtin:textures",
        "detection_source": "builtin:shapes-coco",
        "arch": "resnet_tiny",
        "preset": "demo_cpu",
        "stage_args": chosen["stage_args"],
        "detection_options": chosen["detection_options"],
        "pretrain_args": chosen["pretrain_args"],
        "linear_args": chosen["linear_args"],
        "semisup_args": chosen["semisup_args"],
        "knn_args": chosen["knn_args"],
        "detr_args": chosen["detr_args"],
        "knn_monitor": chosen["knn_monitor"],
        "baselines": True,  # every evaluation beside its random-init twin: the report shows the gain
        "launcher": "local",
        "num_nodes": num_nodes or chosen["num_nodes"],
        **{f"{step}_gpus_per_node": 0 for step in ("linear", "semisup", "detr")},
        "gpus_per_node": 0,
        "pretrain_timeout_hours": 1.0,
        "eval_timeout_hours": 1.0,
    }
    return {**arguments, **check_parameters(params or {})}


def default_storage_root(output: Path, bucket: str) -> str:
    """S3 when the AWS environment names an endpoint (e.g. MinIO or moto), else a folder under output."""
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        fs, _ = storage.filesystem(f"s3://{bucket}")
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        return f"s3://{bucket}/runs"
    return str((output / "storage").resolve())


def without_retries(pipeline: Any) -> Any:
    """A copy of the pipeline whose steps are not retried. kfp's local runner honours the retry policy, sleeping
    its backoff (15, 30, 60 s) before each attempt; locally no launching pod is ever lost with its node (what
    the retries are for: the runner and the steps share this machine), so a retry could only repeat a failure."""
    local_copy = copy.deepcopy(pipeline)
    for task in local_copy.pipeline_spec.root.dag.tasks.values():
        task.ClearField("retry_policy")
    return local_copy


def run_local(size: str, output: Path, storage_root: str | None = None, num_nodes: int | None = None,
              bucket: str = "unmix-swav-demo", params: dict[str, Any] | None = None) -> dict[str, str]:
    """Run the whole pipeline here; returns where the report is (storage URL and local HTML file)."""
    from kfp import local

    from pipeline.dag import unmix_swav_pipeline

    if size not in SIZES:
        raise UserError(f"--size {size!r} is not known; use one of {', '.join(SIZES)}")
    output = output.resolve()
    root = storage_root or default_storage_root(output, bucket)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"),
               raise_on_error=True)
    # The subprocess runner warns about any image without "python" in its name: ours has kfp inside.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    started = time.monotonic()
    arguments = pipeline_arguments(size, root, num_nodes, params)
    pipeline = without_retries(unmix_swav_pipeline) if arguments["launcher"] == "local" else unmix_swav_pipeline
    result = pipeline(**arguments)
    # A reused output folder holds earlier runs too: this run's report is the newest one.
    report_html = max(output.glob("kfp/*/run-report/report_html"), key=lambda path: path.stat().st_mtime, default=None)
    return {"report_url": str(result.output), "report_html": str(report_html),
            "seconds": f"{time.monotonic() - started:.0f}"}


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--tiny", action="store_const", const="tiny", dest="size",
                        help="the smallest run (CI end-to-end test)")
    parser.add_argument("--output", type=Path, default=Path("demo-output"),
                        help="local folder for kfp's task outputs (and storage, without S3)")
    parser.add_argument("--storage-root", default=None,
                        help="fsspec URL for the run's data (default: output/storage, or s3://BUCKET/runs "
                             "when AWS_ENDPOINT_URL is set)")
    parser.add_argument("--bucket", default="unmix-swav-demo")
    parser.add_argument("--num-nodes", type=int, default=None, help="pretraining's local job replicas (nodes)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter (repeatable, as for submit; JSON when it parses), e.g. "
                             "linear_num_nodes=2 or detr_args='[\"--epochs\", \"1\"]'")


def run(args) -> None:
    where = run_local(args.size, args.output, args.storage_root, args.num_nodes, args.bucket,
                      parse_params(args.param))
    print(f"pipeline finished in {where['seconds']} s")
    print(f"report: {where['report_html']}")
    print(f"report in storage: {where['report_url']}")
