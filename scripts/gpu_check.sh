#!/usr/bin/env bash
# The prepared GPU check (issue 11): on a machine with an NVIDIA GPU, set up the current stack with TensorFlow's
# CUDA build in .venv-gpu, then, once with the GPU and once with it hidden (CUDA_VISIBLE_DEVICES=""):
#   1. train the digits CNN through KerasEstimator with Horovod (1 process: one GPU; Gloo for the collectives),
#   2. score a digits table (the demo's test rows, repeated) with score_dataframe,
# and print examples/s (training, steady epochs) and rows/s (scoring) side by side. About 10 minutes once the venv
# exists; the first set-up downloads TensorFlow's CUDA wheels and builds Horovod (~15 min on 2 cores, less on 16).
# Offline machines: point pip at a wheel folder (PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels).
# Usage: scripts/gpu_check.sh [--epochs N] [--rows N]      Exit 2: no GPU here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L fails); nothing to check" >&2
  exit 2
fi
nvidia-smi -L >&2
VENV="${SPARKDL_GPU_VENV:-$PWD/.venv-gpu}"
t0=$SECONDS
SPARKDL_TENSORFLOW=gpu SPARKDL_VENV_CURRENT="$VENV" scripts/setup.sh current
echo "gpu_check: set-up took $((SECONDS - t0)) s" >&2

"$VENV/bin/python" -c 'import tensorflow as tf, sys; g = tf.config.list_physical_devices("GPU"); print("gpu_check: TensorFlow", tf.__version__, "sees", g, file=sys.stderr); sys.exit(0 if g else 3)' \
  || { echo "gpu_check: TensorFlow does not see the GPU (CUDA wheels/driver mismatch?)" >&2; exit 3; }

out="$(mktemp -d)"
"$VENV/bin/python" scripts/gpu_check.py --device gpu --out "$out/gpu.json" "$@"
CUDA_VISIBLE_DEVICES="" "$VENV/bin/python" scripts/gpu_check.py --device cpu --out "$out/cpu.json" "$@"
"$VENV/bin/python" scripts/gpu_check.py --compare "$out/gpu.json" "$out/cpu.json"
echo "gpu_check: done in $((SECONDS - t0)) s (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
