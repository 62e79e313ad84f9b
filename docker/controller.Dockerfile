# syntax=docker/dockerfile:1
# The Deft priority controller: `python -m controller`. No torch: only the controller and
# the priority-table contract (scheduler.priority) are installed, with the controller's own
# dependencies (keep them in step with pyproject.toml).
#   docker build -f docker/controller.Dockerfile -t deft-controller:latest .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/deft
ENV PATH=/opt/deft/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY scheduler ./scheduler
COPY controller ./controller
RUN pip install --upgrade pip \
    && pip install --no-deps . \
    && pip install "kubernetes>=29" "pyyaml>=6" "prometheus-client>=0.20" \
    && python -c "import controller.cli, controller.kube, scheduler.priority"

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 deft \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin deft
COPY --from=builder /opt/deft /opt/deft
ENV PATH=/opt/deft/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8090
ENTRYPOINT ["python", "-m", "controller"]
