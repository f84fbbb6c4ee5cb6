#!/bin/sh
# A virtual environment with PyTorch for the reference benchmarks, kept out of the build:
# bench/pytorch/.venv (ignored by git). PyPI's Linux wheel (CUDA build; runs on CPU too).
set -e
here=$(dirname "$0")
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet "torch==2.15.0" numpy
"$here/.venv/bin/python" -c "import torch; print('torch', torch.__version__, 'ready in', '$here/.venv')"
