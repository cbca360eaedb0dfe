"""How torch.compile sees SyncBatchNorm: graphs and graph breaks of a trunk's training forward (dynamo explain).

    python benchmarks/syncbn_compile_probe.py [resnet50]          # SyncBN in a 2-process gloo group
    PLAIN=1 python benchmarks/syncbn_compile_probe.py [resnet50]  # plain BatchNorm, for comparison

The measurement behind pretrain's refusal of --compile with SyncBN, made on the CPU: SyncBatchNorm only
runs on accelerators, so for this probe only its forward also accepts CPU tensors and the three CUDA-only
kernels of its forward get plain CPU implementations (torch.library). What dynamo does with the module's
Python code (the data-dependent mask, the collectives inside the autograd.Function) is what it does on a GPU.
Measured with torch 2.14: resnet50, 53 BatchNorm layers: 45 graphs (44 breaks) with SyncBN, 1 graph without.
Not a test: it prints numbers.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
import textwrap

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.modules.batchnorm as batchnorm_module
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer.models.resnet import build_trunk  # noqa: E402


def cpu_kernels() -> torch.library.Library:
    """CPU versions of the CUDA-only kernels SyncBatchNorm's forward calls (probe only)."""
    library = torch.library.Library("aten", "IMPL")

    def stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        return x.mean(dims), (x.var(dims, unbiased=False) + eps).rsqrt()

    def gather(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):
        counts = counts.view(-1, 1)
        total = counts.sum()
        mean = (mean_all * counts).sum(0) / total
        var = ((1 / invstd_all**2 - eps + (mean_all - mean) ** 2) * counts).sum(0) / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * total / (total - 1))
        return mean, (var + eps).rsqrt()

    def elementwise(x, weight, bias, mean, invstd, eps):
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * invstd.view(shape)
        return y * weight.view(shape) + bias.view(shape) if weight is not None else y

    library.impl("batch_norm_stats", stats, "CPU")
    library.impl("batch_norm_gather_stats_with_counts", gather, "CPU")
    library.impl("batch_norm_elemt", elementwise, "CPU")
    return library


def accept_cpu_inputs() -> None:
    """SyncBatchNorm.forward with "cpu" added to its accepted device types (probe only)."""
    source = textwrap.dedent(inspect.getsource(nn.SyncBatchNorm.forward)).replace('"cuda",', '"cuda", "cpu",', 1)
    namespace = dict(vars(batchnorm_module))
    exec(source, namespace)  # noqa: S102 - torch's own source, one device name added
    nn.SyncBatchNorm.forward = namespace["forward"]


def probe(rank: int, world: int, init_file: str, arch: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    library = cpu_kernels()  # noqa: F841 - the registrations live as long as the library object
    accept_cpu_inputs()
    trunk, _ = build_trunk(arch)
    layers = sum(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    plain = bool(os.environ.get("PLAIN"))
    model = (trunk if plain else nn.SyncBatchNorm.convert_sync_batchnorm(trunk)).train()
    images = torch.randn(2, 3, 64, 64)
    model(images)  # eager first: the kernels work
    explanation = torch._dynamo.explain(model)(images)
    if rank == 0:
        print(f"{arch}, {layers} BatchNorm layers, {'plain BatchNorm' if plain else 'SyncBatchNorm'}: "
              f"{explanation.graph_count} graphs, {explanation.graph_break_count} graph breaks")
        reasons: dict[str, int] = {}
        for graph_break in explanation.break_reasons:
            key = str(graph_break.reason).splitlines()[0][:150]
            reasons[key] = reasons.get(key, 0) + 1
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            print(f"  {count:3d} x {reason}")
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(probe, args=(2, os.path.join(folder, "init"), sys.argv[1] if len(sys.argv) > 1 else "resnet50"),
                 nprocs=2)
