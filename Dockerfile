# syntax=docker/dockerfile:1
# One image for all four services; compose names the command of each (`python -m services.auth`,
# ... — the same commands `sluice up` runs). The image holds no model: the engine mounts the
# exported folders at /app/models (run `make model` on the host first, or build them here with the
# `models` target below). Targets:
#
#   runtime (default)  the services; no export tools (no torch, no transformers)
#   exporter           `.[export]` installed and the model exported into /app/models at build time
#   models             just the exported folders, to copy onto the host on hosts without a local
#                      export:  docker build --target models --output type=local,dest=models .
#                      (CUDA variant: add --build-arg EXPORT_ARGS="-e cuda")

ARG PYTHON_IMAGE=python:3.11-slim

# --- gRPC stubs, generated exactly as the Makefile's services/pb/.generated rule does -----------
FROM ${PYTHON_IMAGE} AS stubs
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The same requirement as pyproject's dev extra. Resolved in the same build as the runtime's
# grpcio and protobuf, so the stubs' generated-version checks pass against them.
RUN pip install "grpcio-tools>=1.85,<2"
WORKDIR /src
COPY protos/ protos/
RUN python -m grpc_tools.protoc -Iservices/pb=protos --python_out=. --pyi_out=. \
        --grpc_python_out=. protos/*/v1/*.proto \
    && find services/pb -type d -exec touch {}/__init__.py \;

# --- exporter: build-time only, never deployed ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS exporter
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    SLUICE_MODELS_DIR=/app/models
WORKDIR /src
COPY pyproject.toml ./
COPY services/ services/
COPY --from=stubs /src/services/pb/ services/pb/
# accelerate and onnx-ir: imported by the export (services/engine/export.py checks for them)
# but not yet listed in pyproject's export extra.
RUN pip install ".[export]" accelerate onnx-ir
WORKDIR /app
# e.g. --build-arg EXPORT_ARGS="-e cuda" for the cuda-fp16 variant (default: cpu-int4).
ARG EXPORT_ARGS=""
RUN python -m services.cli model export ${EXPORT_ARGS}

FROM scratch AS models
COPY --from=exporter /app/models/smollm2-135m-instruct/ /smollm2-135m-instruct/

# --- runtime: the image compose runs (last stage, so the default target) -------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a source change rebuilds one small layer.
COPY pyproject.toml ./
# onnxruntime-gpu replaces onnxruntime for a GPU engine (compose.gpu.yaml sets it, with its
# `[cuda,cudnn]` extras); ldconfig then makes the CUDA libraries those wheels carry loadable.
ARG ONNXRUNTIME=onnxruntime
RUN mkdir services && touch services/__init__.py \
    && pip install . \
    && if [ "$ONNXRUNTIME" != onnxruntime ]; then \
         pip uninstall -y onnxruntime && pip install "$ONNXRUNTIME" \
         && nvidia="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia" \
         && find "$nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/nvidia-pip.conf \
         && ldconfig; \
       fi
COPY services/ services/
COPY --from=stubs /src/services/pb/ services/pb/
# Installed, not run from a source tree: /app holds only state and the mounted models.
RUN pip install --no-deps --force-reinstall . \
    && rm -rf /src \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --home-dir /app --shell /usr/sbin/nologin sluice \
    && mkdir -p /app/var /app/models \
    && chown sluice:sluice /app/var
WORKDIR /app
ENV SLUICE_DATA_DIR=/app/var SLUICE_MODELS_DIR=/app/models
USER 10001:10001
