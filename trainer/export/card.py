"""MODEL_CARD.md of an export: what the weights are, how they were made, on what data, how good they are
(beside their random-init baselines), what they are for and the licence."""

from __future__ import annotations

import json
from typing import Any

from trainer.export.inputs import evaluation_key

# The pretraining flags a reader needs to judge the recipe; the rest are in the run's params.json.
RECIPE_FLAGS = ("preset", "arch", "epochs", "batch_size", "base_lr", "final_lr", "wd", "warmup_epochs",
                "nmb_crops", "size_crops", "min_scale_crops", "max_scale_crops", "nmb_prototypes", "queue_length",
                "epsilon", "sinkhorn_iterations", "temperature", "run_swav", "unmix_prob", "unmix_beta", "use_fp16",
                "seed")


def headline(document: dict[str, Any]) -> tuple[str, float | None]:
    """The metric an evaluation is judged by and its value (None when it produced none)."""
    if document.get("command") == "detr":
        ap = document.get("box_ap") or {}
        return "box AP", ap.get("AP") if isinstance(ap, dict) else None
    return "top-1 %", document.get("top1")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def evaluation_table(documents: dict[str, dict[str, Any]], exported: str | None) -> list[str]:
    """One row per evaluation of the trunk (named by its folder), beside its random-init twin when the run has
    one; `exported` is the folder of the head in classifier.safetensors."""
    if not documents:
        return ["No evaluation of this trunk was found beside its pretraining folder."]
    twins = {evaluation_key(doc): doc for doc in documents.values() if (doc.get("pretrained") or {}).get("random_init")}
    lines = ["| evaluation | run | metric | this trunk | random init | status |", "|---|---|---|---|---|---|"]
    for url, doc in documents.items():
        if (doc.get("pretrained") or {}).get("random_init"):
            continue
        args = doc.get("args") or {}
        name = doc["command"] + (f" ({args['labels_perc']}% labels)" if args.get("labels_perc") else "")
        folder = url.rstrip("/").rsplit("/", 1)[-1] + (" (exported head)" if url == exported else "")
        metric, value = headline(doc)
        twin = twins.get(evaluation_key(doc))
        lines.append(f"| {name} | {folder} | {metric} | {_number(value)} | "
                     f"{_number(headline(twin)[1]) if twin else 'not run'} | {doc.get('status', 'ok')} |")
    return lines


def method(params: dict[str, Any] | None) -> str:
    """The pretraining method as the run's flags say (`--run_swav true` turns Un-Mix off)."""
    if params is None:
        return "a pretraining whose run was not found"
    return "SwAV" if params.get("run_swav") else "SwAV + Un-Mix"


def _recipe(params: dict[str, Any] | None) -> list[str]:
    if params is None:
        return ["The pretraining run's params.json was not found beside the weights; the recipe is unknown."]
    rows = [f"| `{flag}` | `{json.dumps(params[flag])}` |" for flag in RECIPE_FLAGS if flag in params]
    return [f"{method(params)}, pretrained by `unmix-swav pretrain` with (all flags in the run's params.json):", "",
            "| flag | value |", "|---|---|", *rows]


def _data(label: str, data_path: str | None, manifest: dict[str, Any] | None) -> str:
    if not data_path:
        return f"- {label}: unknown"
    if manifest is None:
        return f"- {label}: `{data_path}` (an image folder, not staged: no manifest to pin its contents)"
    counts = ", ".join(f"{split} {count}" for split, count in manifest["splits"].items())
    return (f"- {label}: `{data_path}`, staged ({manifest['format']}): `{manifest['url']}` sha256 "
            f"`{manifest['sha256']}`; {manifest['classes']} classes; images per split: {counts}")


def render(config: dict[str, Any], pretraining: dict[str, Any] | None, data: dict[str, Any],
           evaluations: dict[str, dict[str, Any]], exported: str | None) -> str:
    """The card's Markdown; `data` maps a label (pretraining, linear evaluation) to (data_path, manifest)."""
    source, arch = config["source"], config["architecture"]
    has_classifier = "classifier.safetensors" in config["files"]
    what = (f"a {config['arch']} ResNet trunk ({arch['block']}, layers {arch['layers']}, "
            f"{arch['feature_dim']}-d pooled features) pretrained without labels by {method(pretraining)}")
    if has_classifier:
        what += (f", and a {config['num_classes']}-class linear classifier trained on the frozen trunk by "
                 f"`unmix-swav eval-linear` (top-1 {_number(source['linear_eval']['top1'])}% on its validation "
                 "split)")
    files = [f"- `{name}`: sha256 `{info['sha256']}`, {info['bytes']} bytes" for name, info in config["files"].items()]
    licence = config["license"] or ("not stated by the exporter (`--license`); the licences of the training "
                                    "data and of this code apply")
    pre = config["preprocessing"]
    lines = [
        f"# {config['arch']} — {method(pretraining)} ({'classifier' if has_classifier else 'trunk'})", "",
        f"**What**: {what}.", "",
        "## Files", *files, "- `config.json`: architecture, classes, preprocessing, digests, provenance", "",
        "## Loading", "",
        "```python", "import torch",
        'model = torch.hub.load("<checkout or owner/repo>", "unmix_swav", export="<this folder or URL>")',
        "```", "",
        f"Preprocessing: resize the shorter side to {pre['resize']} ({pre['interpolation']}), centre-crop "
        f"{pre['crop']}, scale to [0, 1], normalise with mean {pre['mean']} and std {pre['std']}.", "",
        "## Provenance",
        f"- weights: `{source['pretrained']['url']}` (file sha256 `{source['pretrained']['file_sha256']}`, "
        f"trunk tensors sha256 `{source['pretrained']['trunk_sha256']}`)",
    ]
    if has_classifier:
        lines.append(f"- linear head: eval-linear run `{source['linear_eval']['dump']}`, epoch "
                     f"{source['linear_eval']['epoch']}" + (" (its BatchNorm folded into fc)"
                                                            if source["linear_eval"]["use_bn"] else ""))
    lines += ["", "## Recipe", *_recipe(pretraining), "", "## Data",
              *[_data(label, path, manifest) for label, (path, manifest) in data.items()], "",
              "## Evaluation", *evaluation_table(evaluations, exported), "",
              "## Intended use and limits",
              "- Intended: image features for transfer, linear probes and fine-tuning on images like the "
              "pretraining data; the classifier, if present, for the classes listed in config.json only.",
              "- Not measured: robustness to other domains, calibration, fairness across groups; do not use for "
              "decisions about people.",
              "- Scores hold only with config.json's preprocessing; other resizing or normalisation changes them.",
              "- The demo architecture `resnet_tiny` and builtin generated data make test artifacts, not models.",
              "", "## Licence", licence, ""]
    return "\n".join(lines)
