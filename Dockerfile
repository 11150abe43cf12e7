# syntax=docker/dockerfile:1
#
# The gateway image:  docker build -t ghcr.io/example/openai-team-gateway:0.1.0 .
# Run it:             docker run -p 8080:8080 -e OPENAI_API_KEY -e GATEWAY_JWT_SECRET \
#                       ghcr.io/example/openai-team-gateway:0.1.0
# The Helm chart (helm/gateway) mounts its own config at /etc/gateway and probes /healthz and
# /readyz itself, so the image has no HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the project's wheel and install it with its dependencies into a venv ------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel needs, so edits to tests, bench or the chart don't bust the cache.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl

# --- runtime: the venv and nothing else (no compilers, no sources, no pip cache) -------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="openai-team-gateway" \
      org.opencontainers.image.description="OpenAI API gateway for teams" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid that the chart's securityContext (runAsUser 10001) matches.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway

COPY --from=builder /opt/venv /opt/venv
# A default config for `docker run`; the chart mounts its ConfigMap over /etc/gateway.
COPY config/gateway.yaml /etc/gateway/gateway.yaml

# The root filesystem can be read-only: bytecode was compiled at install and is not rewritten.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
