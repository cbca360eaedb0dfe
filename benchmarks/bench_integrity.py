"""The cost of verified checkpoints: save and load time of a ResNet-50 training state with and without
sha256 digests, as ratios measured in one run, on local disk and on an S3 server on loopback (moto).

The state is torchvision's resnet50 with SGD momentum buffers after one step (about 200 MB serialised).
`plain` is what save_torch/load_torch did before digests (torch.save + atomic write; read + torch.load);
`verified` is save_torch/load_torch now (sidecar written and checked); `checkpoint` is the run kit's
save_checkpoint, which also keeps the previous checkpoint beside the latest. Variants run interleaved in a
rotating order, `--repeats` times each; the median and the fastest are printed. Prints measurements only.

    python benchmarks/bench_integrity.py [--repeats 5] [--skip_s3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import loopback_s3  # noqa: E402

from trainer import storage  # noqa: E402
from trainer.run.resume import save_checkpoint  # noqa: E402


def training_state() -> dict[str, Any]:
    model = torchvision.models.resnet50()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # fills the momentum buffers: the optimizer state is as large as the model
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}


def plain_save(state: dict[str, Any], url: str) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.atomic_write_bytes(url, buffer.getvalue())


def plain_load(url: str) -> Any:
    return torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)


def timed(action: Callable[[], Any]) -> float:
    os.sync()  # what the previous action left for the disk to do is not this one's cost
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    del result  # freeing a loaded state is not part of loading it
    return elapsed


def measure(root: str, state: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Seconds of each variant, each repeat; the variants interleaved so drift hits all alike."""
    plain, verified, kept = (storage.join(root, name, "checkpoint.pth.tar") for name in ("plain", "verified", "kept"))
    storage.makedirs(storage.join(root, "plain"))
    storage.makedirs(storage.join(root, "verified"))
    storage.makedirs(storage.join(root, "kept"))
    for url in (verified, kept):
        storage.save_torch(state, url)  # a rewrite, as every save after the first is
    plain_save(state, plain)
    saves = [("save plain", lambda: plain_save(state, plain)),
             ("save verified", lambda: storage.save_torch(state, verified)),
             ("save_checkpoint (verified + previous kept)", lambda: save_checkpoint(kept, state, {"command": "b"}))]
    loads = [("load plain", lambda: plain_load(plain)), ("load verified", lambda: storage.load_torch(verified))]
    times: dict[str, list[float]] = {}
    for variants in (saves, loads):  # saves first, then loads: a load's freed memory never lands in a save
        for repeat in range(repeats):
            shift = repeat % len(variants)  # each variant takes each place in the order: no position bias
            for name, action in variants[shift:] + variants[:shift]:
                times.setdefault(name, []).append(timed(action))
    return times


def report(where: str, times: dict[str, list[float]]) -> None:
    """Median and fastest of each variant, each as a ratio to the plain one (the fastest run is the one least
    disturbed by other work on a shared machine)."""
    print(f"{where}:   median s (ratio)   fastest s (ratio)")
    for name, values in times.items():
        base = times["save plain"] if name.startswith("save") else times["load plain"]
        median, fastest = statistics.median(values), min(values)
        print(f"  {name:<45} {median:7.3f} ({median / statistics.median(base):4.2f})   "
              f"{fastest:7.3f} ({fastest / min(base):4.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip_s3", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    state = training_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    hashing = statistics.median(timed(lambda: hashlib.sha256(data).hexdigest()) for _ in range(args.repeats))
    print(f"resnet50 + SGD momentum state: {len(data) / 2**20:.0f} MB serialised; sha256 alone {hashing:.3f} s "
          f"({len(data) / 2**20 / hashing:.0f} MB/s); {args.repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="unmix-bench-integrity-") as work:
        report(f"local disk ({work})", measure(work, state, args.repeats))
    if args.skip_s3:
        return
    with loopback_s3(None) as endpoint:
        import boto3

        bucket = f"bench-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        report("S3 (moto on loopback)", measure(f"s3://{bucket}", state, max(3, args.repeats // 2)))


if __name__ == "__main__":
    main()
