"""Step 1: validate and stage the image dataset and the detection dataset into object storage."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def stage_data(
    data_source: str,
    detection_source: str,
    storage_root: str,
    run_id: str,
    stage_args: list,
    detection_options: dict,
    images: Output[Dataset],
    detection: Output[Dataset],
) -> NamedTuple("StagedData", [("run_root", str), ("images_url", str), ("detection_url", str)]):
    """Stage `data_source` (builtin:shapes or a URL) and `detection_source` (builtin:shapes-coco or a URL)."""
    from collections import namedtuple

    from components.runtime import json_ints, record_url, run_trainer, step_url

    run_root = step_url(storage_root, run_id)
    images_url = step_url(run_root, "data/images")
    run_trainer("stage", ["--source", data_source, "--dest", images_url, *stage_args])
    record_url(images, images_url, source=data_source)

    if detection_source == "builtin:shapes-coco":
        from trainer.detr.synthetic_coco import make_shapes_coco

        detection_url = step_url(run_root, "data/detection")
        make_shapes_coco(detection_url, **json_ints(detection_options))
    else:
        detection_url = detection_source
    record_url(detection, detection_url, source=detection_source)
    return namedtuple("StagedData", ["run_root", "images_url", "detection_url"])(
        run_root, images_url, detection_url)
