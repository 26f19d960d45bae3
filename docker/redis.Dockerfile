# Redis from Debian's package, for machines where no registry serves redis:7-alpine
# (make containers builds it on its local Debian base).
ARG BASE_IMAGE=yolov1/base-python:3.11
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server", "--appendonly", "yes", "--dir", "/data"]
