"""Samples/s read from staged tar shards (the WebDataset shards of format 2, the previous format 1, and the
same shards read directly as a WebDataset set) vs one file per sample, all from an S3 server on loopback.

Starts moto's S3 server on 127.0.0.1 (unless --endpoint is given), writes a builtin:shapes ImageFolder
to it, stages it to shards, rewrites them in the previous format (tests/trainer/data/previous_format.py), then
reads and decodes every training sample from each layout in the order the trainer would (ResumableSampler:
shard-local shuffle) and in shard order, in one process and through a DataLoader; and streams the new
shards with webdataset's own tar reader, checking that its labels equal ours on every sample.
Prints measurements only.

    python benchmarks/bench_data.py [--images_per_class 60] [--image_size 96] [--loader_workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from torch.utils.data import DataLoader, Dataset

from trainer import env, storage
from trainer.data.decode import decode
from trainer.data.sampler import ResumableSampler
from trainer.data.sources import FolderSource, ImageSource, ShardedSource, open_source
from trainer.data.staging import stage_dataset
from trainer.data.synthetic import make_shapes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "trainer", "data"))
from previous_format import write_previous_format  # noqa: E402


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


REQUESTS: dict[str, int] = {}  # label -> storage reads per 1,000 samples (deterministic, unlike the rates)


def _counting(read: Callable) -> Callable:
    def counted(*args: object, **kwargs: object) -> bytes:
        REQUESTS["current"] = REQUESTS.get("current", 0) + 1
        return read(*args, **kwargs)
    return counted


ShardedSource._read_range = _counting(ShardedSource._read_range)  # type: ignore[method-assign]
FolderSource._read = _counting(FolderSource._read)  # type: ignore[method-assign]


def rate_in_process(source: ImageSource, order: list[tuple[int, int]], label: str = "") -> float:
    REQUESTS["current"] = 0
    started = time.perf_counter()
    for _, index in order:
        assert source.load(index) is not None
    rate = len(order) / (time.perf_counter() - started)
    if label:
        REQUESTS[label] = round(REQUESTS["current"] * 1000 / len(order))
    return rate


def rate_with_loader(source: ImageSource, batch_size: int, workers: int) -> float:
    sampler = ResumableSampler([source.shard_of(i) for i in range(len(source))], 0, 1, 0, batch_size)
    loader = DataLoader(Decoded(source), batch_size=batch_size, sampler=sampler, num_workers=workers,
                        multiprocessing_context="fork", collate_fn=len)
    started = time.perf_counter()
    count = sum(loader)
    return count / (time.perf_counter() - started)


def webdataset_stream(source: ImageSource, pattern: str) -> tuple[float, int]:
    """(samples/s, samples checked) streaming the shards with webdataset's own tar reader over s3fs streams,
    decoding each image and checking that its .cls equals our label for the .json's file name."""
    import json

    from webdataset.shardlists import expand_urls
    from webdataset.tariterators import group_by_keys, tar_file_expander

    ours = {source.name(i): source.targets[i] for i in range(len(source))}
    urls = expand_urls(pattern)
    started = time.perf_counter()
    streams = [{"url": url, "stream": io.BytesIO(storage.read_bytes(url))} for url in urls]
    checked, max_pixels = 0, env.current().max_image_pixels
    for sample in group_by_keys(tar_file_expander(streams)):
        decode(sample[next(k for k in sample if k in ("jpg", "jpeg", "png"))], max_pixels)
        assert int(sample["cls"]) == ours[json.loads(sample["json"])["filename"]], sample["__key__"]
        checked += 1
    return checked / (time.perf_counter() - started), checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="an existing S3 endpoint (default: start moto)")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--images_per_class", type=int, default=60)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--shard_size_mb", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--loader_workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="in-process rates: the median of this many runs")
    args = parser.parse_args()
    # The layouts are compared on per-sample ranged reads (what `reads per 1,000` counts); the default read path
    # on S3, whole shards into the local cache, is measured by benchmarks/bench_storage.py.
    os.environ["UNMIX_SHARD_CACHE"] = "off"

    with loopback_s3(args.endpoint) as endpoint:
        import boto3

        bucket = f"bench-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        folder, staged, previous = f"s3://{bucket}/folder", f"s3://{bucket}/staged", f"s3://{bucket}/previous"
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
        started = time.perf_counter()
        assert stage_dataset(folder, staged, shard_size_mb=args.shard_size_mb, workers=2,
                             progress=lambda message: None) == manifest
        print(f"staged again (same source and options: reused) in {time.perf_counter() - started:.1f}s")
        write_previous_format(staged, previous)
        pattern = storage.join(staged, manifest["splits"]["train"]["pattern"])

        os.environ["UNMIX_INDEX_CACHE"] = tempfile.mkdtemp(prefix="unmix-index-")  # a cold index for the shard set
        for when in ("first (one header pass per shard)", "again (index kept)"):
            started = time.perf_counter()
            open_source(pattern)
            print(f"opened the shards as a WebDataset set {when} in {time.perf_counter() - started:.2f}s")

        files = open_source(folder)
        layouts = [("previous format (1)", lambda: open_source(previous)),
                   ("WebDataset shards (2), staged", lambda: open_source(staged)),
                   ("WebDataset shards (2), as a shard set", lambda: open_source(pattern))]
        rows = [("individual files, trainer order",
                 rate_in_process(files, trainer_order(files, args.batch_size), "individual files, trainer order"))]
        # Median of --repeats runs, the layouts interleaved, so that a noisy moment does not favour one.
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for label, opened in layouts:
                source = opened()
                rates.setdefault(f"{label}, trainer order", []).append(
                    rate_in_process(source, trainer_order(source, args.batch_size), f"{label}, trainer order"))
                rates.setdefault(f"{label}, shard order", []).append(
                    rate_in_process(opened(), [(0, i) for i in range(len(source))], f"{label}, shard order"))
        rows += [(label, float(np.median(values))) for label, values in rates.items()]
        rows += [(f"{label}, DataLoader x{args.loader_workers}",
                  rate_with_loader(opened(), args.batch_size, args.loader_workers)) for label, opened in layouts]
        with tempfile.TemporaryDirectory() as cache:
            cached = open_source(staged, cache_dir=cache)
            sequential = [(0, i) for i in range(len(cached))]
            rows += [("WebDataset shards (2), local cache cold", rate_in_process(cached, sequential)),
                     ("WebDataset shards (2), local cache warm", rate_in_process(cached, sequential))]
        rate, checked = webdataset_stream(open_source(staged), pattern)
        rows.append(("webdataset's own tar reader, shard order", rate))
        rows.append((f"individual files, DataLoader x{args.loader_workers}",
                     rate_with_loader(files, args.batch_size, args.loader_workers)))
        for label, value in rows:
            reads = f"  {REQUESTS[label]:5d} reads per 1,000 samples" if label in REQUESTS else ""
            print(f"{label:<52} {value:8.0f} samples/s{reads}")
        print(f"labels read back by webdataset equal ours on all {checked} training samples")


if __name__ == "__main__":
    main()
