"""How long a 503 / SlowDown storm takes to end a pretraining run (exit 138), against the documented bound.

Starts moto's S3 server on 127.0.0.1 and a proxy in front of it (tests/trainer/data/s3_proxy.py) that forwards the
first `--pass_first` GETs (the manifest, the index, the first shards) and then answers every GET with
503 SlowDown; stages a small generated dataset there and runs `unmix-swav pretrain` from it with the
storage settings of the environment (defaults unless UNMIX_STORAGE_RETRIES / _RETRY_DELAY are set). Prints
the exit code, the time from the first 503 to the end of the process, and storage.retry_bound_s for a
1 s attempt. Prints measurements only.

    python benchmarks/bench_storm.py [--pass_first 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "trainer", "data"))
from bench_data import loopback_s3  # noqa: E402
from s3_proxy import StorageProxy  # noqa: E402

from trainer import storage  # noqa: E402
from trainer.data.staging import stage_dataset  # noqa: E402
from trainer.data.synthetic import make_shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pass_first", type=int, default=6, help="GETs forwarded before the storm")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log", default=None, help="write the run's stderr (its log) to this file")
    args = parser.parse_args()
    with loopback_s3(None) as endpoint, tempfile.TemporaryDirectory(prefix="unmix-bench-storm-") as work:
        import boto3

        bucket = f"storm-{os.getpid()}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        make_shapes(os.path.join(work, "shapes"), num_classes=4, train_per_class=32, val_per_class=0,
                    image_size=32, seed=0)
        remote = f"s3://{bucket}/staged"
        stage_dataset(os.path.join(work, "shapes"), remote, shard_size_mb=0.02, workers=2,
                      progress=lambda message: None)
        proxy = StorageProxy(int(endpoint.rsplit(":", 1)[1]), slow_down=10**9, pass_first=args.pass_first)
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "OMP_NUM_THREADS": "1",
               "UNMIX_SHARD_CACHE": os.path.join(work, "cache")}
        command = [sys.executable, "-m", "trainer", "pretrain", "--data_path", remote, "--dump_path",
                   os.path.join(work, "dump"), "--preset", "demo_cpu", "--nmb_crops", "2", "--size_crops", "32",
                   "--min_scale_crops", "0.3", "--max_scale_crops", "1", "--batch_size", "4", "--epochs", "5",
                   "--nmb_prototypes", "20", "--workers", str(args.workers)]
        started = time.monotonic()
        run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert run.stderr is not None
        lines, error_at = [], None
        for line in run.stderr:  # read as it comes, to time the error line
            lines.append(line)
            if line.startswith("error:") and error_at is None:
                error_at = time.monotonic()
        returncode = run.wait(timeout=1800)
        ended = time.monotonic()
        stderr = "".join(lines)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        if args.log:
            with open(args.log, "w") as log:
                log.write(stderr)
        bound = storage.retry_bound_s(storage.RETRY_ATTEMPTS, storage.RETRY_FIRST_DELAY_S, storage.RETRY_MAX_DELAY_S,
                                      1.0)
        print(f"settings: UNMIX_STORAGE_RETRIES={storage.RETRY_ATTEMPTS} UNMIX_STORAGE_RETRY_DELAY="
              f"{storage.RETRY_FIRST_DELAY_S:g} (max delay {storage.RETRY_MAX_DELAY_S:g} s)")
        print(f"exit {returncode} after {ended - started:.1f} s in all; {proxy.slowed_down} GETs answered 503")
        if proxy.first_slow_down_at is not None:
            to_line = f"{error_at - proxy.first_slow_down_at:.1f} s" if error_at is not None else "none"
            print(f"first 503 to the error line: {to_line}, to exit: {ended - proxy.first_slow_down_at:.1f} s; "
                  f"bound (1 s a failing attempt): {bound:.1f} s")
        print("\n".join(errors) or stderr[-2000:])
        proxy.close()


if __name__ == "__main__":
    main()
