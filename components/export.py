"""Step 8: the run's take-away files under `<run>/export` (`unmix-swav export`: safetensors trunk and classifier,
config.json, MODEL_CARD.md; docs/export.md), after the evaluations, whose metrics.json the model card reads, and
before the report, which links the export.

A small CPU pod, no distributed job: seconds and about 0.5 GiB for a ResNet-50. The export never costs the run its
report: a linear evaluation that cannot be shipped (diverged, unfinished) leaves the trunk alone exported, with a
warning line; any other failure is one `error:` line in the step's log, the step still ends ok with an empty URL,
and the report says that the run has no export and how to make one. The body is components/exporting.py (a
module without kfp: kfp's executor cannot import one that defines components).
"""

from kfp import dsl

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def export_model(run_root: str, backbone_url: str, arch: str, linear_url: str = "") -> str:
    """Export `backbone_url` (and the head of the eval-linear dump `linear_url`, or its metrics.json URL; empty:
    trunk only) to <run_root>/export; returns the export's URL, "" when nothing was exported."""
    from components.exporting import export_run

    return export_run(run_root, backbone_url, arch, linear_url)

