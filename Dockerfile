# syntax=docker/dockerfile:1
# runlog-relay: one image for the sidecar (`runlog-relay sidecar`, the default command)
# and the operator (`runlog-relay operator`). Build: `make image` or
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t runlog-relay:0.1.0 .
#
# Builder: a venv at /opt/runlog-relay with the locked dependencies (binary wheels only:
# no compiler), then the project's own wheel, then `pip check`. Final: the same slim base,
# the venv copied over, nothing else; runs as 65532 and writes nothing outside /tmp, so
# readOnlyRootFilesystem works. tests/integration/test_image.py runs the builder's RUN
# steps below (the ones using /opt/runlog-relay or /opt/build) in a fresh venv.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements/ requirements/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements/build.lock
RUN python -m venv /opt/runlog-relay \
 && /opt/runlog-relay/bin/pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements/runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY daemon/ daemon/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir dist . \
 && /opt/runlog-relay/bin/pip install --no-cache-dir --no-deps dist/runlog_relay-*.whl \
 && /opt/runlog-relay/bin/pip check \
 && /opt/runlog-relay/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="runlog-relay" \
      org.opencontainers.image.description="Mirror runnable run logs from a shared volume to S3/MinIO: sidecar, Kubernetes operator and injection webhook." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No pip, no caches: the base image's own pip is removed too; the venv carries everything.
RUN python -m pip uninstall --yes pip setuptools wheel 2>/dev/null || true \
 && rm -rf /root/.cache /tmp/*
COPY --from=builder /opt/runlog-relay /opt/runlog-relay
ENV PATH=/opt/runlog-relay/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["runlog-relay"]
CMD ["sidecar"]
