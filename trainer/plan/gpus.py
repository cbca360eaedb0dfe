"""The GPUs `unmix-swav plan --gpu NAME` knows: memory, published ResNet-50 training speed, peaks, each with its source.

`images_per_s` is ResNet-50 v1.5 training with mixed precision on one GPU (224 px, one crop an image, the
supervised recipe) where NVIDIA publishes it: NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/
resnet50v1.5/README.md, "Training performance" tables (pytorch-21.03 NGC container, 1 GPU, AMP). For the GPUs
that table lacks, the A100 80GB figure is scaled by the smaller of the two ratios that bound a training step,
dense bf16 tensor peak and memory bandwidth (a roofline guess: ResNet-50's BatchNorm/ReLU passes are
bandwidth-bound, its convolutions compute-bound), and said to be scaled. `make gpu-bench` replaces any of them
with a measurement (trainer/plan/throughput.py). `node_scaling` is the published 8-GPU strong scaling of the same
tables (8-GPU images/s / (8 x 1-GPU images/s)); None where not published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer.errors import UserError

NVIDIA_RN50 = "NVIDIA DeepLearningExamples ResNet-50 v1.5 PyTorch, AMP training, 1 GPU (pytorch-21.03)"
DATASHEET = "NVIDIA datasheet"


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # what the datasheet sells (GB of HBM/GDDR, as CUDA reports it in GiB, about)
    images_per_s: float  # ResNet-50 AMP training, 224 px, one GPU
    source: str  # where images_per_s comes from
    peak_bf16_tflops: float  # dense tensor-core peak (fp16 on V100, which has no bf16)
    bandwidth_gb_s: float  # memory bandwidth, datasheet
    node_scaling: float | None = None  # published 8-GPU strong scaling / 8


A100_80GB_IMAGES_PER_S = 2470.0  # NVIDIA_RN50, DGX A100 80GB table
A100_PEAK, A100_BANDWIDTH = 312.0, 2039.0


def scaled_from_a100(peak_tflops: float, bandwidth_gb_s: float) -> tuple[float, str]:
    """A GPU without a published figure: A100 80GB's 2,470 images/s x min(peak ratio, bandwidth ratio)."""
    ratio = min(peak_tflops / A100_PEAK, bandwidth_gb_s / A100_BANDWIDTH)
    return (round(A100_80GB_IMAGES_PER_S * ratio, -1),
            f"scaled: A100 80GB's published 2,470 images/s x {ratio:.2f} = min(bf16 peak {peak_tflops:g}/"
            f"{A100_PEAK:g} TFLOP/s, bandwidth {bandwidth_gb_s:g}/{A100_BANDWIDTH:g} GB/s) ({DATASHEET}s)")


def _scaled(name: str, memory_gib: float, peak: float, bandwidth: float) -> Gpu:
    images, source = scaled_from_a100(peak, bandwidth)
    return Gpu(name, memory_gib, images, source, peak, bandwidth)


GPUS: dict[str, Gpu] = {gpu.name: gpu for gpu in (
    Gpu("v100-16gb", 16.0, 1200.0, f"{NVIDIA_RN50}, DGX-1 16GB table", 125.0, 900.0, 8322 / 8 / 1200),
    Gpu("v100-32gb", 32.0, 1156.0, f"{NVIDIA_RN50}, DGX-1 32GB table", 125.0, 900.0, 8056 / 8 / 1156),
    # The A100 40GB table (ConvNets/README.md, pytorch-20.06, NCHW: 9,488 images/s on 8 GPUs) is older software;
    # same chip and peak as the 80GB part, so the 80GB figure is used (its 1.56 vs 2.04 TB/s is not a bound here).
    Gpu("a100-40gb", 40.0, A100_80GB_IMAGES_PER_S, f"{NVIDIA_RN50}, DGX A100 80GB table (same chip)", A100_PEAK,
        1555.0, 16621 / 8 / 2470),
    Gpu("a100-80gb", 80.0, A100_80GB_IMAGES_PER_S, f"{NVIDIA_RN50}, DGX A100 80GB table", A100_PEAK,
        A100_BANDWIDTH, 16621 / 8 / 2470),
    _scaled("h100", 80.0, 989.0, 3350.0),  # H100 SXM5 80GB
    _scaled("h200", 141.0, 989.0, 4800.0),  # H200 SXM 141GB
    _scaled("l40s", 48.0, 362.0, 864.0),
    _scaled("l4", 24.0, 121.0, 300.0),
    _scaled("a10", 24.0, 125.0, 600.0),
    _scaled("b200", 180.0, 2250.0, 8000.0),
)}
DEFAULT_GPU = "h100"
DEFAULT_NODE_SCALING = 0.85  # where no 8-GPU figure is published: about NVIDIA's A100 (0.84) and V100 (0.87)


def gpu(name: str) -> Gpu:
    if name not in GPUS:
        raise UserError(f"--gpu {name!r} is not known; choose one of {', '.join(GPUS)}, or give --gpu_memory_gib "
                        "and --gpu_images_per_s for another GPU")
    return GPUS[name]


# CUDA device names -> GPU kinds, most specific first; a key matches whole words (so "L4" is not "L40S").
_KINDS = (("GH200", "h200"), ("H200", "h200"), ("H100", "h100"), ("B200", "b200"), ("A100.*80GB", "a100-80gb"),
          ("A100", "a100-40gb"), ("V100.*32GB", "v100-32gb"), ("V100", "v100-16gb"), ("L40S", "l40s"), ("L4", "l4"),
          ("A10", "a10"))


def kind_of(device_name: str) -> str | None:
    """The GPU kind of a CUDA device name ("NVIDIA H100 80GB HBM3" -> "h100"), None when not in the table."""
    for pattern, kind in _KINDS:
        if re.search(rf"(?<!\w){pattern}(?!\w)", device_name):
            return kind
    return None


def this_machine() -> str | None:
    """The GPU kind of this process's CUDA device (LOCAL_RANK's), None without one (or one not in the table)."""
    import torch

    from trainer import env

    if not torch.cuda.is_available():
        return None
    return kind_of(torch.cuda.get_device_name(env.current().local_rank % torch.cuda.device_count()))
