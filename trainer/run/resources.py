"""Node sizing: loader workers and intra-op threads per rank from the CPUs this container may use.

The defaults of the seed (`--workers 10` per GPU) start 8 x 10 loader processes on an 8-GPU node; on a
32-CPU pod they and the 8 training processes fight over 32 CPUs. Here the CPUs come from the container's
own limits (the affinity mask, and the cgroup CPU quota that Kubernetes' `resources.limits.cpu` sets),
shared by the ranks of this node (LOCAL_WORLD_SIZE, set by torchrun). On a GPU each rank's main process
keeps one CPU (the Python loop, pinning, launching kernels; its intra-op threads have little to do) and
its loader gets the rest, never more than asked. `pod_sizing` gives what a PyTorchJob should set for a pod.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

from trainer import env

MAX_WORKERS_PER_RANK = 16
# Measured on the worker side (decode + geometric multi-crop of 500x375 JPEGs to 2x224 + 6x96): per core.
IMAGES_PER_S_PER_WORKER = 550
# uint8 bytes of one sample of the ImageNet recipe's crops, 2 x 224^2 x 3 + 6 x 96^2 x 3, as workers pass it
IMAGENET_SAMPLE_BYTES = 2 * 224 * 224 * 3 + 6 * 96 * 96 * 3
PREFETCH_FACTOR = 4  # batches each worker keeps ready (pretrain's DataLoader)
GIB = 2**30
# Resident memory estimates (not measured on a GPU node): a training process (torch, CUDA context, pinned
# buffers) and one loader worker.
RANK_MEMORY_ESTIMATE = 4 * GIB
WORKER_MEMORY_ESTIMATE = GIB // 2


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, else v1 cfs quota / period); None when unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as handle:
            quota_us = int(handle.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as handle:
            period_us = int(handle.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus() -> tuple[int, str]:
    """Whole CPUs this process may use (at least 1) and where that number comes from."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None and quota < affinity:
        return max(1, math.floor(quota)), f"cgroup CPU quota {quota:g} (affinity mask {affinity})"
    return max(1, affinity), f"affinity mask {affinity}" + ("" if quota is None else f" (cgroup quota {quota:g})")


def ranks_on_this_node() -> int:
    """Processes of this job on this node: torchrun's LOCAL_WORLD_SIZE, else 1 (one process per pod)."""
    return env.current().local_world_size


@dataclass(frozen=True)
class NodeSizing:
    workers: int  # loader processes per rank
    threads: int | None  # intra-op threads per rank; None: left to torch / OMP_NUM_THREADS
    line: str  # the log line: what was chosen and why


def size_rank(cpus: int, ranks: int, on_gpu: bool, requested_workers: int, threads_given: bool = False,
              where: str = "") -> NodeSizing:
    """Workers and threads for one rank of `ranks` sharing `cpus` (pure: the numbers only).

    GPU: the rank's share of CPUs minus one for its main process goes to its loader (at least 1, at most
    `requested_workers` and MAX_WORKERS_PER_RANK); one intra-op thread unless OMP_NUM_THREADS was given.
    CPU: training runs in the main process; the requested workers are kept and torch's threads are left
    alone (the line still says what the node offers).
    """
    share = max(1, cpus // ranks)
    source = f" ({where})" if where else ""
    if not on_gpu:
        return NodeSizing(requested_workers, None,
                          f"node sizing: {cpus} CPUs{source} for {ranks} process(es) on this node; CPU training: "
                          f"--workers {requested_workers} kept, intra-op threads left to torch "
                          f"({os.environ.get('OMP_NUM_THREADS', 'unset')} OMP_NUM_THREADS)")
    fitting = min(MAX_WORKERS_PER_RANK, max(1, share - 1))
    workers = min(requested_workers, fitting) if requested_workers > 0 else 0
    threads = None if threads_given else 1
    why = (f"--workers {requested_workers} capped: {ranks} x {requested_workers + 1} processes would "
           f"oversubscribe {cpus} CPUs" if workers < requested_workers else f"--workers {requested_workers} fits")
    thread_text = "OMP_NUM_THREADS kept" if threads_given else "1 intra-op thread"
    rate = workers * IMAGES_PER_S_PER_WORKER
    return NodeSizing(workers, threads,
                      f"node sizing: {cpus} CPUs{source} for {ranks} GPU rank(s) on this node, {share} per rank: "
                      f"{workers} loader workers + {thread_text} per rank ({why}); the loader gives about "
                      f"{rate} images/s per rank at ~{IMAGES_PER_S_PER_WORKER} per worker")


def size_this_rank(on_gpu: bool, requested_workers: int) -> NodeSizing:
    """`size_rank` for this process, from its container's CPUs and LOCAL_WORLD_SIZE."""
    cpus, where = available_cpus()
    return size_rank(cpus, ranks_on_this_node(), on_gpu, requested_workers,
                     threads_given="OMP_NUM_THREADS" in os.environ, where=where)


def pod_sizing(cpus: int, gpus: int, memory: int, batch_size: int = 64, requested_workers: int = 10,
               sample_bytes: int = IMAGENET_SAMPLE_BYTES) -> dict:
    """What a pretraining pod of `cpus` CPUs, `gpus` GPUs (one rank each) and `memory` bytes should set.

    shm: every worker keeps PREFETCH_FACTOR batches of uint8 crops in shared memory, which is backed by the
    pod's memory and counts against its limit; twice that in-flight volume is asked for (workers hand
    batches over while others are being filled). `memory_after_shm` is what is left for the processes.
    """
    ranks = max(1, gpus)
    sizing = size_rank(cpus, ranks, on_gpu=gpus > 0, requested_workers=requested_workers)
    in_flight = ranks * sizing.workers * PREFETCH_FACTOR * batch_size * sample_bytes
    shm_bytes = math.ceil(2 * in_flight / GIB) * GIB
    result = {"ranks": ranks, "workers_per_rank": sizing.workers, "threads_per_rank": sizing.threads or 1,
              "env": {"OMP_NUM_THREADS": str(sizing.threads or 1)}, "shm_bytes": shm_bytes,
              "shm_size": f"{shm_bytes // GIB}Gi", "loader_images_per_s_per_rank":
              sizing.workers * IMAGES_PER_S_PER_WORKER, "memory_after_shm": memory - shm_bytes,
              "line": sizing.line}
    processes = ranks * (RANK_MEMORY_ESTIMATE + sizing.workers * WORKER_MEMORY_ESTIMATE)
    result["memory_estimate"] = processes + shm_bytes
    if memory < processes + shm_bytes:
        result["warning"] = (f"{memory / GIB:.0f} GiB may be too little: {shm_bytes // GIB} GiB of shm plus about "
                             f"{processes / GIB:.0f} GiB for {ranks} ranks and their workers; give the pod about "
                             f"{math.ceil((processes + shm_bytes) / GIB)} GiB")
    return result


def compiler_problem(device_type: str) -> str | None:
    """Why torch.compile cannot build kernels here, or None. On a GPU, Triton needs a C compiler ($CC, else
    gcc or clang, as triton.runtime.build looks them up) for its launchers; on the CPU, Inductor needs a C++
    compiler ($CXX, else g++). The PyTorch `-runtime` base images ship neither."""
    if device_type == "cuda":
        chosen = os.environ.get("CC")
        if chosen:
            return None if shutil.which(chosen) else f"CC={chosen} (Triton's C compiler) is not found"
        if shutil.which("gcc") or shutil.which("clang"):
            return None
        return "no C compiler for Triton in this image (no CC, no gcc or clang on PATH; install gcc)"
    found = os.environ.get("CXX") or "g++"
    if shutil.which(found):
        return None
    return f"no C++ compiler for Inductor in this image ({found} not found; set CXX or install g++)"
