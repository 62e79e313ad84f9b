# syntax=docker/dockerfile:1
# The Deft runtime: `python -m runtime`, as KServe's ServingRuntime starts it.
#
# CPU (default):
#   docker build -f docker/runtime.Dockerfile -t deft-runtime:latest .
# CUDA: the CUDA wheels of torch carry the CUDA libraries; the node's driver comes in through
# the NVIDIA container toolkit, so the slim base works as it is:
#   docker build -f docker/runtime.Dockerfile \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t deft-runtime:cuda .
# or on a CUDA base image (Python is installed from the distribution when the base lacks it):
#   docker build -f docker/runtime.Dockerfile \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t deft-runtime:cuda .
#
# Both stages start from the same BASE_IMAGE, so the virtualenv built in the first runs on
# the same interpreter in the second. Compilers live only in the build stage.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
# build-essential: for any dependency that comes as a source distribution on this platform.
RUN set -eux; \
    apt-get update; \
    if command -v python3 >/dev/null && python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get install -y --no-install-recommends build-essential; \
    else \
        apt-get install -y --no-install-recommends build-essential python3 python3-dev python3-venv; \
    fi; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/deft
ENV PATH=/opt/deft/bin:$PATH
# torch first, from the chosen index, so the project's "torch>=2.4" is already satisfied.
RUN pip install --upgrade pip && pip install "${TORCH}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY scheduler ./scheduler
COPY runtime ./runtime
COPY controller ./controller
# ModelMesh's gRPC stubs are generated at build time and installed with the package
RUN pip install grpcio-tools && python -m runtime.modelmesh.gen && pip uninstall -y grpcio-tools \
    && pip install . && pip check

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 deft; \
    useradd --system --uid 10001 --gid 10001 --home-dir /home/deft --create-home \
        --shell /usr/sbin/nologin deft; \
    install -d -o 10001 -g 10001 /var/cache/deft /mnt/models
COPY --from=builder /opt/deft /opt/deft
COPY config /opt/deft/config
ENV PATH=/opt/deft/bin:$PATH \
    DEFT_CONFIG_DIR=/opt/deft/config \
    HOME=/home/deft \
    DEFT_CACHE_DIR=/var/cache/deft \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/deft
USER 10001:10001
# 8080: v2 REST and /metrics, 8081: v2 gRPC
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "runtime"]
