"""The export step's body (components/export.py): `unmix-swav export` of a run into `<run>/export`, which never
costs the run its report: a linear evaluation that cannot be shipped leaves the trunk exported alone (one
warning line); any other failure is one `error:` line and an empty URL, and the step ends ok."""

from __future__ import annotations

import dataclasses
import sys

from trainer import steps as catalogue
from trainer import storage
from trainer.errors import UserError
from trainer.export.command import ExportRequest
from trainer.export.command import export_run as export
from trainer.report.collect import dump_of
from trainer.run.boundary import one_line, run_guarded


def export_run(run_root: str, backbone_url: str, arch: str, linear_url: str = "") -> str:
    """The body of the export step: the export's URL, or "" after one `error:` line."""
    request = ExportRequest(pretrained=backbone_url, arch=arch, dest=storage.join(run_root, catalogue.EXPORT_FOLDER),
                            linear=dump_of(linear_url) if linear_url else "")

    def _export() -> None:
        try:
            export(request)
        except UserError as error:
            if not request.linear:
                raise
            export(dataclasses.replace(request, linear=""))  # raises the trunk's own problem when that was it
            print(f"warning: export: the linear evaluation's head is not exported ({one_line(error)}); the trunk "
                  "is exported alone", file=sys.stderr, flush=True)

    code = run_guarded(_export)
    if code:
        print(f"error: export: nothing was exported to {request.dest} (exit {code}, the line above says why); the "
              "report is written without an export", file=sys.stderr, flush=True)
        return ""
    print(f"[export] {request.dest}", flush=True)
    return request.dest
