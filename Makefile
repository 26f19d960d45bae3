PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= train,api,worker,cpu,dev

.PHONY: install test run run-api bench gpu-check soak model lint clean containers proto

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU wheel lies on this machine; an unpinned torch
# would download a CUDA build of several GB.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	bash scripts/ensure-test-tools.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=15

# The gRPC stubs of KServe v2 (app/grpc_v2), from the .proto beside them.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. app/grpc_v2/inference.proto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The API on YOLOV1_HOST:YOLOV1_PORT (127.0.0.1:8000) and one training worker;
# an embedded Redis unless YOLOV1_REDIS_URL is set (scripts/serve.py).
run: $(STAMP)
	$(BIN)/python scripts/serve.py

# The API alone (detect, loss, models); no Redis, no worker.
run-api: $(STAMP)
	$(BIN)/python -m app

bench: $(STAMP)
	cd bench && ../$(BIN)/python bench_loss.py
	cd bench && ../$(BIN)/python bench_infer.py
	cd bench && ../$(BIN)/python bench_api.py
	cd bench && ../$(BIN)/python bench_protocols.py
	cd bench && ../$(BIN)/python bench_train.py
	cd bench && ../$(BIN)/python bench_worker.py
	cd bench && ../$(BIN)/python bench_finetune.py

# On a machine with a CUDA GPU: detect with ONNX Runtime's CUDA (and TensorRT) provider
# and the training step on CUDA in bf16, with make bench's ratios (bench/gpu_check.py).
gpu-check: $(STAMP)
	cd bench && ../$(BIN)/python gpu_check.py

# Mixed traffic and abuse against the API and a worker for SOAK_SECONDS (not a test).
soak: $(STAMP)
	$(BIN)/python scripts/soak.py

# The shipped default model, from scratch (fixed data and seeds; README has the time it takes).
model: $(STAMP)
	$(BIN)/yolov1 train --data shapes --preset default --out runs/default
	$(BIN)/yolov1 train --data shapes:train-closeups --preset closeups --seed 1 \
		--init runs/default/best.pt --out runs/default-closeups
	$(BIN)/yolov1 export runs/default-closeups/best.pt models/default/model.onnx \
		--slim-checkpoint models/default/model.pt
	$(BIN)/yolov1 calibrate models/default/model.onnx --data shapes:hard --precision 0.9
	$(BIN)/yolov1 quantize models/default/model.onnx
	for level in easy medium hard closeup; do \
		$(BIN)/yolov1 val models/default/model.onnx --data shapes:$$level --images 500; done

# Build the images, run the compose stack on host networking, check it, tear it down
# (needs dockerd and docker-compose; no registry: see README "Containers"). Not a test.
containers: $(STAMP)
	$(BIN)/python scripts/containers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
