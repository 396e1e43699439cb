# llm-sidecar image: `llm-sidecar serve` with policies mounted at /etc/llm-sidecar/policies.
#
#   docker build -t llm-sidecar .
#   docker run --read-only -p 8480:8480 -p 8481:8481 -e SIDECAR_HOST=0.0.0.0 \
#     -v "$PWD/policies:/etc/llm-sidecar/policies:ro" llm-sidecar
#
# The proxy listens on 127.0.0.1 by default: right in a Kubernetes pod, where only the app
# container beside it (same network namespace) may call it. `docker run -p` forwards to the
# container's own interface, so there set SIDECAR_HOST=0.0.0.0 as above. The ops port (health,
# status) listens on all interfaces for the kubelet and the HEALTHCHECK.
#
# Dependencies install only from requirements.lock, every file checked against its sha256
# (pip --require-hashes). Regenerate the lock after changing pyproject.toml's dependencies:
#
#   .venv/bin/pip install pip-tools
#   .venv/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras \
#     --build-deps-for wheel --no-emit-index-url --no-emit-find-links \
#     --output-file requirements.lock pyproject.toml
#
# (--build-deps-for wheel pins setuptools too, so the project itself builds offline.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/llm-sidecar
WORKDIR /src
COPY requirements.lock ./
RUN /opt/llm-sidecar/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# The project itself: no index, no build isolation (setuptools comes from the lock above).
RUN /opt/llm-sidecar/bin/pip install --no-cache-dir --no-deps --no-index \
        --no-build-isolation . \
    && /opt/llm-sidecar/bin/pip uninstall --yes setuptools \
    && /opt/llm-sidecar/bin/python -m compileall -q /opt/llm-sidecar/lib

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="llm-sidecar" \
      org.opencontainers.image.description="A small, fast LLM gateway that runs beside your application: routing, fallback, limits, budgets and hot-reloaded YAML policies." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it. The state folder is
# the only place written: a volume, so the root filesystem can be read-only.
RUN groupadd --system --gid 10001 llm-sidecar \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/llm-sidecar --shell /usr/sbin/nologin llm-sidecar \
    && mkdir -p /etc/llm-sidecar/policies /var/lib/llm-sidecar \
    && chown 10001:10001 /var/lib/llm-sidecar

COPY --from=build /opt/llm-sidecar /opt/llm-sidecar

ENV PATH=/opt/llm-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_POLICIES=/etc/llm-sidecar/policies \
    SIDECAR_STATE_DIR=/var/lib/llm-sidecar \
    SIDECAR_HOST=127.0.0.1 \
    SIDECAR_PORT=8480 \
    SIDECAR_OPS_HOST=0.0.0.0 \
    SIDECAR_OPS_PORT=8481

VOLUME ["/var/lib/llm-sidecar"]
WORKDIR /var/lib/llm-sidecar
USER 10001:10001
EXPOSE 8480 8481

# Healthy = serving with a valid policy loaded (/readyz). Plain Python: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SIDECAR_OPS_PORT', '8481'), timeout=2)"]

ENTRYPOINT ["llm-sidecar"]
CMD ["serve"]
