# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target service -t lrtune-service .   # API + dashboard, no torch
#   docker build --target worker  -t lrtune-worker  .   # worker, CPU torch
#   docker build --target worker --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t lrtune-worker:cuda .                        # worker, CUDA torch
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md alembic.ini ./
COPY lrtune ./lrtune
COPY service ./service
COPY worker ./worker
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 LRTUNE_DATABASE_URL=sqlite:////data/lrtune.db
RUN groupadd --system --gid 10001 lrtune \
    && useradd --system --uid 10001 --gid lrtune --home-dir /data --create-home lrtune
WORKDIR /data

FROM runtime AS service
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 8000 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["lrtune", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# a C++ compiler for torch.compile of fused packs (LRTUNE_FUSED_COMPILE); without one they
# train eagerly
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
# torch first, from the chosen index (CPU by default, CUDA with --build-arg TORCH_INDEX=…).
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[worker]" && rm -rf /wheels
USER 10001:10001
STOPSIGNAL SIGTERM
CMD ["lrtune", "worker"]
