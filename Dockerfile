# syntax=docker/dockerfile:1
# The trainer image: every pipeline step, the PyTorchJob's replicas and the k8s/ Jobs run it.
# Build: docker build -t ghcr.io/unmix-swav/trainer:0.1.0 .
# The base is the official PyTorch CUDA runtime matching the torch pin in pyproject.toml; a CPU
# variant lives in images/Dockerfile.cpu.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/unmix-swav
# --compile: Triton builds its kernel launchers with a C compiler, which the -runtime base image lacks
# (the trainer refuses --compile with one line when none is found). gcc comes from the base image's own
# distribution, so its version follows the base image's pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && gcc --version
# Dependencies first (cached layer): the versions CI tested, from images/constraints.txt.
COPY pyproject.toml README.md ./
COPY images/constraints.txt images/constraints.txt
COPY trainer/ trainer/
COPY launch/ launch/
COPY components/ components/
COPY pipeline/ pipeline/
# An air-gapped build names its PyPI mirror: --build-arg PYPI_INDEX_URL=URL (docs/cluster.md).
ARG PYPI_INDEX_URL=https://pypi.org/simple
RUN pip install --no-cache-dir --index-url "$PYPI_INDEX_URL" --constraint images/constraints.txt . \
    && python -c "import trainer.cli, launch.kube, launch.torchrun, components.runtime, kfp.dsl.executor_main" \
    && python -c "from trainer.run.resources import compiler_problem as p; import sys; sys.exit(p('cuda'))" \
    && groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin trainer

# Matches runAsUser in k8s/ and launch/spec.py; the root filesystem can be mounted read-only.
USER 10001:10001
# No ENTRYPOINT: the PyTorchJobs run `python -m launch.torchrun ... -m trainer <command>`, kfp runs
# `sh -c ... python3`.
CMD ["unmix-swav", "--help"]
