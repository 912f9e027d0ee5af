#!/usr/bin/env bash
# GPU check of the engine: the CUDA provider runs the model (no silent CPU fallback), greedy
# output agrees with the CPU, a prefill copied slot to slot on the device (n > 1) decodes like the
# original, and single-stream and batch-32/64 throughput and time to first token.
#
# For a GPU host with CUDA 13 libraries and Python 3.12 but no onnxruntime-gpu and no registry:
#   scripts/gpu_check.sh --wheels DIR --models DIR [--out FILE]
# DIR (--wheels) holds onnxruntime_gpu-1.31.1-*.whl (whole, or split into *.whl.part-* pieces that
# are joined here) and any other cp312 wheels the host lacks (tokenizers, grpcio, protobuf,
# jinja2, llguidance); all are installed with --no-deps into a private folder that shadows the host's
# CPU-only onnxruntime. --models is the folder holding cuda-fp16/ (or cuda-int4/) and cpu-int4/.
#   scripts/gpu_check.sh --cpu-only [--models DIR]   runs the same checks on the CPU provider.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wheels="" models="$here/../models/smollm2-135m-instruct" cpu_only="" out="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2;;
    --models) models="$2"; shift 2;;
    --out) out="$2"; shift 2;;
    --cpu-only) cpu_only=1; shift;;
    *) extra+=("$1"); shift;;
  esac
done
py="${PYTHON:-python3}"
args=(--model-dir "$models")
[ -n "$out" ] && args+=(--out "$out")
if [ -n "$cpu_only" ]; then
  exec "$py" "$here/gpu_check.py" --cpu-only "${args[@]}" "${extra[@]}"
fi
[ -n "$wheels" ] || { echo "usage: $0 --wheels DIR --models DIR | --cpu-only" >&2; exit 2; }
site="${GPU_CHECK_SITE:-/tmp/sluice-gpu-site}"
work="$(mktemp -d)"
# Pieces of a wheel too large to carry whole are joined back in name order.
for first in "$wheels"/*.whl.part-aa; do
  [ -e "$first" ] || continue
  whl="${first%.part-aa}"; cat "$whl".part-* > "$work/$(basename "$whl")"
done
cp "$wheels"/*.whl "$work"/ 2>/dev/null || true
ls "$work"/onnxruntime_gpu-*.whl >/dev/null || { echo "no onnxruntime_gpu wheel in $wheels" >&2; exit 2; }
"$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$work"/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
exec "$py" "$here/gpu_check.py" "${args[@]}" "${extra[@]}"
