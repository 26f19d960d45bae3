# Targets: api (ONNX Runtime on the CPU, no torch), api-gpu (onnxruntime-gpu on CUDA),
# worker (torch, CPU), worker-gpu (torch on CUDA). The default model ships in models/.
#
# PYTHON_IMAGE is any Debian-like image with Python 3.11 and its venv module:
# python:3.11-slim from a registry, or the local base `make containers` builds with
# debootstrap where no registry answers (README: "Containers").

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTHON_IMAGE} AS source
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY jobs jobs
COPY model model
COPY worker worker
COPY yolov1_client yolov1_client
COPY models models

FROM ${PYTHON_IMAGE} AS api
WORKDIR /srv
# A virtual environment: Debian's own Python refuses system-wide pip installs (PEP 668).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH YOLOV1_HOST=0.0.0.0 YOLOV1_PORT=8000 \
    YOLOV1_MODEL_STORE=/srv/store YOLOV1_DATA_ROOT=/srv/data
RUN python3 -m venv /opt/venv
COPY --from=source /srv /srv
RUN pip install --no-cache-dir ".[api,worker,cpu]"
RUN useradd --create-home --uid 10001 yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('YOLOV1_PORT', '8000'), timeout=2)"
CMD ["python", "-m", "app"]

FROM ${PYTHON_IMAGE} AS worker
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    YOLOV1_MODEL_STORE=/srv/store YOLOV1_DATA_ROOT=/srv/data
# torch's CPU build by default (PyPI's own torch for Linux is the CUDA build, several
# GB). TORCH_INDEX: an index of torch wheels; TORCH_FIND_LINKS: a folder or page of them
# (make containers serves this machine's wheel so).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=""
RUN python3 -m venv /opt/venv
COPY --from=source /srv /srv
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX:+--extra-index-url ${TORCH_INDEX}} \
        ${TORCH_FIND_LINKS:+--find-links ${TORCH_FIND_LINKS}} \
    && python -c "import torch, sys; sys.exit('a CUDA torch' if torch.version.cuda else 0)" \
    && pip install --no-cache-dir ".[train,worker,cpu]"
RUN useradd --create-home --uid 10001 yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
# A node name of its own: replicas on one host (host networking) share its host name.
CMD ["sh", "-c", "node=worker-$(cat /proc/sys/kernel/random/uuid | cut -c1-8)@%h; echo $node > /tmp/node; exec celery -A worker.celery_app worker --loglevel=INFO -c 1 -Q training -n $node"]
HEALTHCHECK --interval=10s --timeout=8s --start-period=30s \
  CMD sh -c 'celery -A worker.celery_app inspect ping -t 5 -d "$(cat /tmp/node | sed s/%h/$(hostname)/)" > /dev/null'

# The GPU targets last: the classic builder runs every stage before the one it is
# asked for, and these need the CUDA base image.
FROM ${CUDA_IMAGE} AS api-gpu
WORKDIR /srv
# Ubuntu 22.04's python3-pip is Python 3.10's: the 3.11 venv brings a pip of its own.
ENV PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    YOLOV1_HOST=0.0.0.0 YOLOV1_PORT=8000 YOLOV1_MODEL_STORE=/srv/store YOLOV1_DATA_ROOT=/srv/data
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
COPY --from=source /srv /srv
RUN pip install --no-cache-dir ".[api,worker,gpu]"
RUN useradd --create-home --uid 10001 yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('YOLOV1_PORT', '8000'), timeout=2)"
CMD ["python", "-m", "app"]

FROM ${CUDA_IMAGE} AS worker-gpu
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    YOLOV1_MODEL_STORE=/srv/store YOLOV1_DATA_ROOT=/srv/data
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
COPY --from=source /srv /srv
# PyPI's torch for Linux x86 is the CUDA build: what this image wants.
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir ".[train,worker,gpu]"
RUN useradd --create-home --uid 10001 yolo && mkdir -p /srv/store /srv/data && chown -R yolo /srv
USER yolo
CMD ["sh", "-c", "node=worker-$(cat /proc/sys/kernel/random/uuid | cut -c1-8)@%h; echo $node > /tmp/node; exec celery -A worker.celery_app worker --loglevel=INFO -c 1 -Q training -n $node"]
HEALTHCHECK --interval=10s --timeout=8s --start-period=30s \
  CMD sh -c 'celery -A worker.celery_app inspect ping -t 5 -d "$(cat /tmp/node | sed s/%h/$(hostname)/)" > /dev/null'
