"""Step 8: the run's take-away files under `<run>/export` (`unmix-swav export`: safetensors trunk and classifier,
config.json, MODEL_CARD.md; docs/export.md), after the evaluations, whose metrics.json the model card reads, and
before the report, which links the export.

A small CPU pod, no distributed job: seconds and about 0.5 GiB for a ResNet-50. The export never costs the run its
report: a linear evaluation that cannot be shipped (diverged, unfinished) leaves the trunk alone exported, with a
warning line; any other failure is one `error:` line in the step's log, the step still ends ok with an empty URL,
and the report says that the run has no export and how to make one.
"""

from kfp import dsl

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def export_model(run_root: str, backbone_url: str, arch: str, linear_url: str = "") -> str:
    """Export `backbone_url` (and the head of the eval-linear dump `linear_url`, or its metrics.json URL; empty:
    trunk only) to <run_root>/export; returns the export's URL, "" when nothing was exported."""
    from components.export import export_run

    return export_run(run_root, backbone_url, arch, linear_url)


def export_run(run_root: str, backbone_url: str, arch: str, linear_url: str = "") -> str:
    """The body of the export step (see the module): the export's URL, or "" after one `error:` line."""
    import dataclasses
    import sys

    from trainer import steps as catalogue
    from trainer import storage
    from trainer.errors import UserError
    from trainer.export.command import ExportRequest
    from trainer.export.command import export_run as export
    from trainer.report.collect import dump_of
    from trainer.run.boundary import one_line, run_guarded

    request = ExportRequest(pretrained=backbone_url, arch=arch, dest=storage.join(run_root, catalogue.EXPORT_FOLDER),
                            linear=dump_of(linear_url) if linear_url else "")

    def _export() -> None:
        try:
            export(request)
        except UserError as error:
            if not request.linear:
                raise
            print(f"warning: export: the linear evaluation's head is not exported ({one_line(error)}); exporting "
                  "the trunk alone", file=sys.stderr, flush=True)
            export(dataclasses.replace(request, linear=""))

    code = run_guarded(_export)
    if code:
        print(f"error: export: nothing was exported to {request.dest} (exit {code}, the line above says why); the "
              "report is written without an export", file=sys.stderr, flush=True)
        return ""
    print(f"[export] {request.dest}", flush=True)
    return request.dest
