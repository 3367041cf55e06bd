#!/usr/bin/env bash
# GPU check (issue 20, item 5): one epoch of ResNet18 and MobileNetV2 on the real sample on CUDA,
# fp16 AMP + channels_last, then the default top_blocks recipe; prints images/s, loader efficiency,
# peak GPU memory and test accuracy. Installs nothing: it uses the project's venv (or $PYTHON).
# Needs ../shared/data/petimages-sample (or --sample DIR). ImageNet weights are used when torchvision's
# cache holds them ($TORCH_HOME/hub/checkpoints; `python -m catsdogs.training.weights` seeds
# MobileNetV2's), else the networks start from scratch and the accuracy says so.
# Usage: benchmarks/gpu_check.sh [--sample DIR] [--batch 128] [--archs resnet18,mobilenet_v2]
#        benchmarks/gpu_check.sh --device cpu --smoke      # check the script on a CPU
# Bounded to 8 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export PYTHONPATH="$PWD/include:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec timeout --kill-after=10 470 "$PYTHON" benchmarks/gpu_check.py "$@"
