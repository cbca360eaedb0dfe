"""The report's Export section: the run's export (`unmix-swav export`, the pipeline's export step) found in
storage under `<run>/export` by its config.json (written last: a folder with one is a complete export), linked
file by file with config.json's sha256; without one, the command that makes it."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from trainer import steps as catalogue
from trainer import storage
from trainer.export.command import CARD_FILE, CONFIG_FILE

HUB = 'torch.hub.load("path/to/unmix-swav checkout", "unmix_swav", export="{url}", source="local")'


@dataclass(frozen=True)
class ExportFile:
    name: str
    url: str
    what: str
    sha256: str = ""
    size: int | None = None


@dataclass(frozen=True)
class Export:
    """A run's export folder: `files` when it holds a complete export, else `missing` says what to do."""

    url: str
    files: tuple[ExportFile, ...] = ()
    summary: str = ""
    missing: str = ""


def _make_command(run_root: str, pretrain_args: dict[str, Any], has_linear: bool) -> str:
    linear = f" --linear {storage.join(run_root, catalogue.CLASSIFIER_STEP)}" if has_linear else ""
    dest = storage.join(run_root, catalogue.EXPORT_FOLDER)
    return (f"unmix-swav export --pretrained {storage.join(run_root, 'pretrain', 'backbone.pth')} "
            f"--arch {pretrain_args.get('arch') or 'ARCH'}{linear} --dest {dest}")


def find_export(run_root: str, pretrain_args: dict[str, Any] | None, has_linear: bool) -> Export | None:
    """The export under `run_root`; None when there is none and no pretraining to export either."""
    folder = storage.join(run_root, catalogue.EXPORT_FOLDER)
    config_url = storage.join(folder, CONFIG_FILE)
    config: Any = None
    if storage.exists(config_url):
        try:
            config = json.loads(storage.read_text(config_url))
        except (ValueError, UnicodeDecodeError):
            config = None
    if not isinstance(config, dict) or not isinstance(config.get("files"), dict):
        if pretrain_args is None:
            return None
        found = "is not a config.json of unmix-swav export" if storage.exists(config_url) else "does not exist"
        return Export(folder, missing=f"{config_url} {found}: the run has no export. Make one with "
                                      f"`{_make_command(run_root, pretrain_args, has_linear)}`")
    weights = {"trunk.safetensors": "the trunk under torchvision's names",
               "classifier.safetensors": "trunk + linear head as fc"}
    files = [ExportFile(CARD_FILE, storage.join(folder, CARD_FILE), "model card"),
             ExportFile(CONFIG_FILE, config_url, "architecture, classes, preprocessing, digests, provenance")]
    for name, record in config["files"].items():
        record = record if isinstance(record, dict) else {}
        files.append(ExportFile(name, storage.join(folder, name), weights.get(name, "weights"),
                                str(record.get("sha256") or ""), record.get("bytes")))
    classes = config.get("num_classes")
    linear = (config.get("source") or {}).get("linear_eval") or {}
    summary = (f"{config.get('arch')}: classifier for {classes} classes (eval-linear top-1 {linear.get('top1')})"
               if classes else f"{config.get('arch')}: the trunk alone (no linear evaluation head)")
    return Export(folder, tuple(files), summary)


def _size(size: int | None) -> str:
    return "—" if size is None else f"{size / 2**20:.1f} MiB"


def export_html(export: Export) -> str:
    e = html.escape
    if export.missing:
        return f"<h2>Export</h2><p id='export'>{e(export.missing)}</p>"
    rows = "".join(f"<tr><td><a href='{e(item.url)}'>{e(item.name)}</a></td><td>{e(item.what)}</td>"
                   f"<td class='num'>{_size(item.size)}</td><td><code>{e(item.sha256 or '—')}</code></td></tr>"
                   for item in export.files)
    return (f"<h2>Export</h2><p>{e(export.summary)}, in <code>{e(export.url)}</code>. Load it with "
            f"<code>{e(HUB.format(url=export.url))}</code> (docs/export.md).</p><table id='export'><tr><th>File</th>"
            f"<th>What</th><th>Size</th><th>sha256</th></tr>{rows}</table>")


def export_markdown(export: Export) -> list[str]:
    if export.missing:
        return ["## Export", "", export.missing.replace("|", "\\|"), ""]
    lines = ["## Export", "", f"{export.summary}, in `{export.url}`; load it with `{HUB.format(url=export.url)}`.",
             "", "| File | What | Size | sha256 |", "|---|---|---:|---|"]
    lines += [f"| [{item.name}]({item.url}) | {item.what} | {_size(item.size)} | `{item.sha256 or '—'}` |"
              for item in export.files]
    return [*lines, ""]
