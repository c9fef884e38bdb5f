# syntax=docker/dockerfile:1
# The otaudit collector image: what helm/otaudit runs (image.repository ghcr.io/otaudit/otaudit).
#
#   docker build -t ghcr.io/otaudit/otaudit:0.1.0 .
#   docker push ghcr.io/otaudit/otaudit:0.1.0
#   docker run --rm -p 4317-4319:4317-4319 ghcr.io/otaudit/otaudit:0.1.0 serve --host 0.0.0.0
#
# The tag is the collector's version (collector/otaudit_collector/__init__.py), which is the
# chart's appVersion and so its default image tag. Build from the repository root: the wheel
# bundles catalogs/ and config/ (collector/setup.py).

# -- builder: wheels of the collector (with its C decoder) and of every dependency -----------
FROM python:3.11-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY verifier/ verifier/
COPY collector/ collector/
COPY catalogs/ catalogs/
COPY config/ config/
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ./verifier ./collector

# -- runtime: the wheels installed, no compiler, a non-root user -------------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 otaudit \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/otaudit --create-home --no-log-init \
       --shell /usr/sbin/nologin otaudit
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels otaudit-collector \
    && otaudit --version
# Without a database URL, `otaudit serve` runs the embedded PostgreSQL in ./otaudit-data,
# here /var/lib/otaudit/otaudit-data (PostgreSQL refuses to run as root: this user is not).
WORKDIR /var/lib/otaudit
USER 10001:10001
# OTLP/gRPC, OTLP/HTTP, the API (/healthz, /readyz, the admin API and the web page)
EXPOSE 4317 4318 4319
ENTRYPOINT ["otaudit"]
CMD ["serve"]
