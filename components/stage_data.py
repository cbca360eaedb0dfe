"""Step 1: validate and stage the image dataset and the detection dataset, once per source and options.

The locations derive from the source and the staging options, not the run: a later run with the same
inputs reuses what an earlier one staged (components/staged.py), and the step is cached by kfp.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def stage_data(
    data_source: str,
    detection_source: str,
    storage_root: str,
    staged_data: str,
    stage_args: list,
    detection_options: dict,
    images: Output[Dataset],
    detection: Output[Dataset],
) -> NamedTuple("StagedData", [("images_url", str), ("detection_url", str)]):
    """Stage `data_source` (a URL or builtin:<kind>) unless `staged_data` names a staged dataset; generate or
    pass through `detection_source` (builtin:shapes-coco or a COCO-format URL)."""
    from collections import namedtuple

    from components.runtime import json_ints, record_url
    from components.staged import stage_step

    images_url, detection_url = stage_step(storage_root, data_source, detection_source, staged_data,
                                           [str(arg) for arg in stage_args], json_ints(detection_options))
    record_url(images, images_url, source=staged_data or data_source)
    record_url(detection, detection_url, source=detection_source)
    return namedtuple("StagedData", ["images_url", "detection_url"])(images_url, detection_url)
