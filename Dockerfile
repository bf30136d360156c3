# syntax=docker/dockerfile:1
# Build stage: compile wheels with a toolchain; runtime stage: only what runs.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
# Every room (the packages `[tool.importlinter] root_packages` names; tests/test_dockerfile.py).
COPY kernel kernel
COPY channels channels
COPY billing billing
COPY ledger ledger
COPY payments payments
COPY enotes enotes
COPY kiosks kiosks
COPY settlement settlement
COPY gateway gateway
COPY bench bench
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PAYGATE_HOST=0.0.0.0 PAYGATE_PORT=8000 PAYGATE_ENV=production \
    PAYGATE_LOG_FORMAT=json PAYGATE_MIGRATIONS_DIR=/app/migrations
RUN groupadd --system paygate && useradd --system --gid paygate --home /app paygate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY migrations /app/migrations
USER paygate
EXPOSE 8000
# DATABASE_URL and REDIS_URL must be provided: the embedded servers are for a laptop.
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live').status != 200)"
ENTRYPOINT ["paygate", "serve"]
