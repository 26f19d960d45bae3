# syntax=docker/dockerfile:1
# Targets: api (ONNX Runtime on the CPU, no torch), api-gpu (onnxruntime-gpu on CUDA),
# worker (torch, CPU), worker-gpu (torch on CUDA). The default model ships in models/.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS source
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY model model
COPY worker worker
COPY scripts scripts
COPY models models

FROM ${PYTHON_IMAGE} AS api
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 YOLOV1_HOST=0.0.0.0 YOLOV1_PORT=8000
COPY --from=source /srv /srv
RUN pip install --no-cache-dir ".[api,worker,cpu]"
RUN useradd --create-home yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["python", "-m", "app"]

FROM ${CUDA_IMAGE} AS api-gpu
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 YOLOV1_HOST=0.0.0.0 YOLOV1_PORT=8000
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY --from=source /srv /srv
RUN python3.11 -m pip install --no-cache-dir ".[api,worker,gpu]"
EXPOSE 8000
CMD ["python3.11", "-m", "app"]

FROM ${PYTHON_IMAGE} AS worker
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# TORCH_INDEX: a package index with CPU-only torch wheels (empty: the default index).
ARG TORCH_INDEX=""
COPY --from=source /srv /srv
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX:+--index-url ${TORCH_INDEX}} \
    && pip install --no-cache-dir ".[train,worker,cpu]"
RUN useradd --create-home yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO", "-c", "1", "-Q", "training"]

FROM ${CUDA_IMAGE} AS worker-gpu
WORKDIR /srv
ENV PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY --from=source /srv /srv
RUN python3.11 -m pip install --no-cache-dir torch==2.13.0 && python3.11 -m pip install --no-cache-dir ".[train,worker,gpu]"
CMD ["python3.11", "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO", "-c", "1", "-Q", "training"]
