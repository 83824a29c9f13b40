# The demo service (and the traffic generator: same image, other command).

# Wheels first (the package is pure Python; its dependencies come as wheels): the image that
# runs keeps no build files.
FROM python:3.11.11-slim-bookworm AS wheels
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[demo,fastapi]'

FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=wheels /wheels /wheels
RUN pip install --no-index --find-links /wheels 'exitstack-otel[demo,fastapi]' \
    && rm -rf /wheels

RUN useradd --system --uid 10001 --no-create-home demo
USER demo

EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --retries=12 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

ENTRYPOINT ["exitstack-otel"]
CMD ["demo", "--serve", "--host", "0.0.0.0", "--port", "8000"]
