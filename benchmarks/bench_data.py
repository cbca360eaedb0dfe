"""Samples/s read from staged tar shards vs one file per sample, both from an S3 server on loopback.

Starts moto's S3 server on 127.0.0.1 (unless --endpoint is given), writes a builtin:shapes ImageFolder
to it, stages it to shards, then reads and decodes every training sample in the order the trainer
would (ResumableSampler: shard-local shuffle) from each layout, in one process and through a DataLoader.
Prints measurements only.

    python benchmarks/bench_data.py [--images_per_class 60] [--image_size 96] [--loader_workers 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch.utils.data import DataLoader, Dataset

from trainer.data.sampler import ResumableSampler
from trainer.data.sources import ImageSource, open_source
from trainer.data.staging import stage_dataset
from trainer.data.synthetic import make_shapes


@contextmanager
def loopback_s3(endpoint: str | None) -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_REGION", "us-east-1")
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        yield endpoint
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


class Decoded(Dataset):
    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.source.load(item[1]))


def trainer_order(source: ImageSource, batch_size: int) -> list[tuple[int, int]]:
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], 0, 1, 0, batch_size)
    return list(sampler)


def rate_in_process(source: ImageSource, order: list[tuple[int, int]]) -> float:
    started = time.perf_counter()
    for _, index in order:
        assert source.load(index) is not None
    return len(order) / (time.perf_counter() - started)


def rate_with_loader(source: ImageSource, batch_size: int, workers: int) -> float:
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], 0, 1, 0, batch_size)
    loader = DataLoader(Decoded(source), batch_size=batch_size, sampler=sampler, num_workers=workers,
                        multiprocessing_context="fork", collate_fn=len)
    started = time.perf_counter()
    count = sum(loader)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="an existing S3 endpoint (default: start moto)")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--images_per_class", type=int, default=60)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--shard_size_mb", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--loader_workers", type=int, default=2)
    args = parser.parse_args()

    with loopback_s3(args.endpoint) as endpoint:
        import boto3

        bucket = f"bench-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        folder, staged = f"s3://{bucket}/folder", f"s3://{bucket}/staged"
        started = time.perf_counter()
        make_shapes(folder, args.num_classes, args.images_per_class, 0, args.image_size, seed=0)
        print(f"generated {args.num_classes * args.images_per_class} images of {args.image_size} px on S3 "
              f"in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        manifest = stage_dataset(folder, staged, shard_size_mb=args.shard_size_mb, workers=2,
                                 progress=lambda message: None)
        shards = manifest["splits"]["train"]["shards"]
        print(f"staged to {len(shards)} shards of ~{np.mean([s['size'] for s in shards]) / 2**20:.2f} MB "
              f"in {time.perf_counter() - started:.1f}s")

        files, shards_source = open_source(folder), open_source(staged)
        with tempfile.TemporaryDirectory() as cache:
            cached = open_source(staged, cache_dir=cache)
            sequential = [(0, i) for i in range(len(shards_source))]
            rows = [
                ("individual files, trainer order", rate_in_process(files, trainer_order(files, args.batch_size))),
                ("staged shards, trainer order (range reads)",
                 rate_in_process(shards_source, trainer_order(shards_source, args.batch_size))),
                ("staged shards, shard order (read-ahead)", rate_in_process(open_source(staged), sequential)),
                ("staged shards, local cache cold", rate_in_process(cached, sequential)),
                ("staged shards, local cache warm", rate_in_process(cached, sequential)),
                (f"individual files, DataLoader x{args.loader_workers}",
                 rate_with_loader(files, args.batch_size, args.loader_workers)),
                (f"staged shards, DataLoader x{args.loader_workers}",
                 rate_with_loader(shards_source, args.batch_size, args.loader_workers)),
            ]
        for label, rate in rows:
            print(f"{label:<48} {rate:8.0f} samples/s")


if __name__ == "__main__":
    main()
