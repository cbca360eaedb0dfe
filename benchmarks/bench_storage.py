"""Reading staged shards from object storage with real latency: S3 (default read path, and the per-sample ranged
reads it replaced) against the same shards on local disk, in one run.

Starts moto's S3 server on 127.0.0.1 and a proxy in front of it (tests/trainer/data/s3_proxy.py) that adds
`--latency_ms` (30) to every request and optionally caps the bandwidth per connection; writes photo-like JPEGs
(about 100 KB, ImageNet's bytes per pixel), stages them into `--shard_size_mb` shards on S3 and copies the
same shards to local disk. Then, one after the other, for each read path:
  1. samples/s per process reading and decoding in trainer order (ResumableSampler) with `--workers` loader
     workers, GETs per 1,000 samples (counted by the proxy) and MB per GET;
  2. `unmix-swav pretrain` images/s (resnet_tiny at `--size` px, same flags) from the run's own metrics.jsonl,
     the median of `--repeats` interleaved runs, and the ratio to local disk.
Each S3 run starts with an empty shard cache (a cold host). Prints measurements only. `--verify_cost` measures
instead what shard verification costs: pretraining images/s from S3 (default path) with shard verification on
and off (UNMIX_VERIFY_SHARDS=1 / 0), interleaved, and their ratio; half the runs start with a warm cache from an
earlier run, whose entries are checked once (the digest) before use.

    python benchmarks/bench_storage.py [--images 600] [--latency_ms 30] [--bandwidth_mb_s 0] [--workers 4]
    python benchmarks/bench_storage.py --verify_cost [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "trainer", "data"))
from bench_data import Decoded, loopback_s3  # noqa: E402
from bench_loader import write_jpegs  # noqa: E402
from s3_proxy import StorageProxy  # noqa: E402

from trainer import cli, storage  # noqa: E402
from trainer.data import streaming  # noqa: E402
from trainer.data.sampler import ResumableSampler  # noqa: E402
from trainer.data.sources import open_source  # noqa: E402
from trainer.data.staging import stage_dataset  # noqa: E402


@contextmanager
def read_path(name: str, proxy: StorageProxy) -> Iterator[None]:
    """`default`: the shard cache in a fresh (cold) folder; `ranged`: UNMIX_SHARD_CACHE=off; `local`: no S3."""
    saved = os.environ.get("UNMIX_SHARD_CACHE")
    with tempfile.TemporaryDirectory(prefix="unmix-bench-cache-") as cache:
        if name == "ranged":
            os.environ["UNMIX_SHARD_CACHE"] = "off"
        else:
            os.environ.pop("UNMIX_SHARD_CACHE", None)
            tempfile.tempdir = cache  # the default cache folder lives under the temp folder: a cold host
        proxy.requests.clear()
        try:
            yield
        finally:
            tempfile.tempdir = None
            if saved is None:
                os.environ.pop("UNMIX_SHARD_CACHE", None)
            else:
                os.environ["UNMIX_SHARD_CACHE"] = saved


def plain_read(url: str, workers: int, batch_size: int) -> tuple[float, int, int]:
    """(samples/s, samples, remote bytes read) decoding every training sample in trainer order."""
    source = open_source(url)
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], 0, 1, 0, batch_size)
    loader = DataLoader(Decoded(source), batch_size=batch_size, sampler=sampler, num_workers=workers,
                        multiprocessing_context="fork", collate_fn=len)
    before = streaming.read_counts()
    started = time.perf_counter()
    count = sum(loader)
    return count / (time.perf_counter() - started), count, streaming.read_counts().bytes - before.bytes


def pretrain_rate(url: str, dump: str, args: argparse.Namespace) -> tuple[float, float]:
    """(median images/s, mean data wait in s) of the steps after the first two, as `pretrain` logged them."""
    cli.run_command("pretrain", [
        "--data_path", url, "--dump_path", dump, "--device", "cpu", "--arch", "resnet_tiny",
        "--batch_size", str(args.batch_size), "--max_steps", str(args.steps), "--log_freq", "1",
        "--workers", str(args.workers), "--epochs", "1", "--warmup_epochs", "0", "--base_lr", "0.6",
        "--nmb_crops", "2", "--size_crops", str(args.size), "--min_scale_crops", "0.14", "--max_scale_crops", "1",
        "--nmb_prototypes", "100", "--queue_length", "0", "--seed", "0",
    ])
    with open(os.path.join(dump, "metrics.jsonl")) as lines:
        steps = [record for record in map(json.loads, lines) if "images_per_s" in record][2:]
    return statistics.median(r["images_per_s"] for r in steps), statistics.mean(r["data_time"] for r in steps)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (loader workers, when joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def verify_cost(remote: str, proxy: StorageProxy, args: argparse.Namespace) -> None:
    """Plain reads and pretraining images/s from S3 with shard verification on and off, interleaved."""
    reads: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for verify in (True, False):
            os.environ["UNMIX_VERIFY_SHARDS"] = "1" if verify else "0"
            with read_path("default", proxy):
                cpu = cpu_seconds()
                rate, count, _ = plain_read(remote, args.workers, args.batch_size)
                reads[verify].append((rate, (cpu_seconds() - cpu) * 1000 / count))
    (on, on_cpu), (off, off_cpu) = (tuple(map(statistics.median, zip(*reads[v], strict=True))) for v in (True, False))
    print(f"\nplain reads from S3, cold cache, DataLoader x{args.workers}, median of {args.repeats}: verification "
          f"on {on:.0f} samples/s, off {off:.0f} samples/s, ratio {on / off:.3f}; CPU s per 1,000 samples (this "
          f"process and its loader workers): on {on_cpu:.2f}, off {off_cpu:.2f}, ratio off/on {off_cpu / on_cpu:.3f}")
    if args.skip_pretrain:
        os.environ["UNMIX_VERIFY_SHARDS"] = "1"
        return
    print(f"\nshard verification cost: pretraining from S3 (default path), resnet_tiny at {args.size} px, batch "
          f"{args.batch_size}, {args.workers} workers, {args.steps} steps, median of {args.repeats} runs, CPU")
    rates: dict[tuple[bool, str], list[float]] = {}
    for _ in range(args.repeats):
        for verify in (True, False):
            os.environ["UNMIX_VERIFY_SHARDS"] = "1" if verify else "0"
            with read_path("default", proxy):
                for cache in ("cold", "warm"):  # warm: the entries the cold run left (a restarted job)
                    with tempfile.TemporaryDirectory(prefix="unmix-bench-run-") as dump:
                        rates.setdefault((verify, cache), []).append(pretrain_rate(remote, dump, args)[0])
    os.environ["UNMIX_VERIFY_SHARDS"] = "1"
    for cache in ("cold", "warm"):
        on, off = (statistics.median(rates[(verify, cache)]) for verify in (True, False))
        print(f"  {cache} cache: verification on {on:7.1f} images/s, off {off:7.1f} images/s, ratio {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--shard_size_mb", type=float, default=2.0)
    parser.add_argument("--latency_ms", type=float, default=30.0)
    parser.add_argument("--bandwidth_mb_s", type=float, default=0.0, help="per connection; 0: no cap")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="crop size of the pretraining runs")
    parser.add_argument("--repeats", type=int, default=3, help="pretraining runs per path; the median is printed")
    parser.add_argument("--skip_pretrain", action="store_true")
    parser.add_argument("--verify_cost", action="store_true", help="only the verification on/off ratio")
    args = parser.parse_args()
    args.steps = min(args.images // args.batch_size, 20)

    with loopback_s3(None) as endpoint, tempfile.TemporaryDirectory(prefix="unmix-bench-storage-") as work:
        import boto3

        bucket = f"bench-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        photos = write_jpegs(os.path.join(work, "photos"), args.images)
        remote, local = f"s3://{bucket}/staged", os.path.join(work, "staged")
        manifest = stage_dataset(photos, remote, shard_size_mb=args.shard_size_mb, workers=2,
                                 progress=lambda message: None)
        storage.filesystem(remote)[0].get(f"{bucket}/staged", local, recursive=True)
        shards = manifest["splits"]["train"]["shards"]
        mean_mb = float(np.mean([s["size"] for s in shards])) / 2**20
        print(f"{args.images} photos ({mean_mb * len(shards) * 2**20 / args.images / 1e3:.0f} KB each) in "
              f"{len(shards)} shards of {mean_mb:.2f} MB; S3 behind a proxy adding {args.latency_ms:.0f} ms a "
              f"request{f', {args.bandwidth_mb_s:.0f} MB/s per connection' if args.bandwidth_mb_s else ''}")
        target_port = int(endpoint.rsplit(":", 1)[1])
        proxy = StorageProxy(target_port, args.latency_ms / 1e3, args.bandwidth_mb_s or None)
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        if args.verify_cost:
            verify_cost(remote, proxy, args)
            proxy.close()
            return
        paths = [("S3, default (whole shards, cache)", "default", remote),
                 ("S3, UNMIX_SHARD_CACHE=off (per sample)", "ranged", remote),
                 ("local disk, same shards", "local", local)]

        print(f"\nplain reads, trainer order, DataLoader x{args.workers}, one process")
        for label, name, url in paths:
            with read_path(name, proxy):
                rate, count, nbytes = plain_read(url, args.workers, args.batch_size)
                gets = proxy.get_count()
            per_mb = f"{nbytes / 2**20 / gets:6.2f} MB per GET" if gets else ""
            print(f"  {label:<42} {rate:7.0f} samples/s  {gets * 1000 / count:6.1f} GETs per 1,000 samples  "
                  f"{per_mb}")

        if args.skip_pretrain:
            return
        print(f"\npretraining, resnet_tiny at {args.size} px, batch {args.batch_size}, {args.workers} workers, "
              f"{args.steps} steps (median of steps 3-{args.steps}, median of {args.repeats} runs), CPU")
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for _, name, _ in paths}
        for _ in range(args.repeats):  # interleaved, so that a busy moment on a shared machine hits every path
            for _, name, url in paths:
                with read_path(name, proxy), tempfile.TemporaryDirectory(prefix="unmix-bench-run-") as dump:
                    rate, wait = pretrain_rate(url, dump, args)
                    runs[name].append((rate, wait, proxy.get_count()))
        rates = {}
        for label, name, _ in paths:
            rates[name] = statistics.median(run[0] for run in runs[name])
            wait = statistics.median(run[1] for run in runs[name])
            gets = runs[name][-1][2]
            print(f"  {label:<42} {rates[name]:7.1f} images/s  data wait {wait:.3f} s/step  "
                  f"{gets * 1000 / (args.steps * args.batch_size):6.1f} GETs per 1,000 samples")
        for name in ("default", "ranged"):
            print(f"  ratio S3 {name} / local disk: {rates[name] / rates['local']:.2f}")
        proxy.close()


if __name__ == "__main__":
    main()
