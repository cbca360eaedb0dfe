"""Named recipes: the seed's SBATCH scripts that torchvision can build, one preset per published run.

Each preset sets the per-process flags of the original script; `world_size` is the number of GPUs the
recipe was published with (64 for the batch-4096 runs, 4 for the batch-256 runs). With another world size
the global batch changes, and the learning rate does NOT scale linearly: SwAV's own recipes are 0.6 at 256 and
4.8 at 4096, a factor 8 for 16x the batch (linear scaling of 0.6 would give 9.6 at 4096, of 4.8 only 0.3 at 256).
`unmix-swav plan` and `pretrain --auto_scale` derive the learning rates (lr ~ batch^0.75 through both recipes),
warm-up, queue, prototype freezing and count for any global batch (trainer/plan/recipe.py, docs/planning.md).
"""

from __future__ import annotations

from typing import Any

from trainer.errors import UserError

_MULTI_CROP = {
    "nmb_crops": [2, 6], "size_crops": [224, 96], "min_scale_crops": [0.14, 0.05],
    "max_scale_crops": [1.0, 0.14],
}
_BATCH_4096 = {
    **_MULTI_CROP, "arch": "resnet50", "batch_size": 64, "base_lr": 4.8, "final_lr": 0.0048,
    "freeze_prototypes_niters": 313, "wd": 1e-6, "warmup_epochs": 10, "start_warmup": 0.3,
    "queue_length": 0, "nmb_prototypes": 3000, "epsilon": 0.05, "use_fp16": True, "world_size": 64,
}
_BATCH_256 = {
    **_MULTI_CROP, "arch": "resnet50", "batch_size": 64, "base_lr": 0.6, "final_lr": 0.0006,
    "freeze_prototypes_niters": 5005, "wd": 1e-6, "warmup_epochs": 0, "start_warmup": 0.0,
    "queue_length": 3840, "epoch_queue_starts": 15, "nmb_prototypes": 3000, "epsilon": 0.05,
    "use_fp16": True, "world_size": 4,
}

PRESETS: dict[str, dict[str, Any]] = {
    "swav_100ep": {**_BATCH_4096, "epochs": 100},
    "swav_200ep": {**_BATCH_4096, "epochs": 200},
    "swav_400ep": {**_BATCH_4096, "epochs": 400},
    "swav_800ep": {**_BATCH_4096, "epochs": 800},
    "swav_400ep_2x224": {**_BATCH_4096, "epochs": 400, "nmb_crops": [2], "size_crops": [224],
                         "min_scale_crops": [0.08], "max_scale_crops": [1.0]},
    "swav_200ep_bs256": {**_BATCH_256, "epochs": 200},
    "swav_400ep_bs256": {**_BATCH_256, "epochs": 400},
    # Small recipe for the generated builtin:textures at 32 px: CPU demo and tests (not a published run).
    # Measured on 6 classes x 100 images, 2 CPU threads (benchmarks/eval_acceptance.py, README):
    # - SGD + LARC moved the trunk too little at lr 0.15 and, at lr 2, drove kNN below a random trunk;
    #   AdamW at 2e-3 learns in a few hundred steps.
    # - Learnable prototypes collapsed to ln(K) at batch 32 (also with 300 of them); prototypes frozen at
    #   their random initialisation, with feat_dim well below nmb_prototypes, keep the codes spread.
    # - Two 32 px crops beat 2x32 + 2x16 multi-crop at equal wall time; at equal epochs four extra 16 px crops of
    #   8-30% of the image beat the random trunk in 20 epochs (README, Known limits): `make demo` adds them
    #   (pipeline/local_run.py), this preset stays at two crops (the tests' step time).
    #   SwAV's blur (sigma up to 2 px, sized for 224 px crops) would wash out a pattern whose period is
    #   6 to 10 px: blur_prob 0, as small-image recipes do (not measured separately).
    "demo_cpu": {
        "arch": "resnet_tiny", "nmb_crops": [2], "size_crops": [32], "min_scale_crops": [0.3],
        "max_scale_crops": [1.0], "batch_size": 32, "optimizer": "adamw", "base_lr": 0.002, "final_lr": 1e-5,
        "warmup_epochs": 1, "start_warmup": 1e-4, "freeze_prototypes_niters": 10**9, "nmb_prototypes": 60,
        "feat_dim": 16, "hidden_mlp": 256, "queue_length": 0, "epsilon": 0.05, "blur_prob": 0.0,
        "use_fp16": False, "epochs": 40, "workers": 2, "world_size": 1,
    },
}


def preset(name: str) -> dict[str, Any]:
    """The flags of preset `name` (without its informational `world_size`)."""
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not known; choose one of: {', '.join(PRESETS)}")
    return {key: value for key, value in PRESETS[name].items() if key != "world_size"}
