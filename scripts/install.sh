#!/usr/bin/env bash
# Installs jaxsteer with its test extras into the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
# The CPU build of torch (for the PyTorch parity tests) before anything can pull a CUDA build.
python -m pip install -q torch==2.13.0
# neural-tangents 0.6.5 declares TensorFlow and tf2jax as hard requirements (about 2 GB) that
# only its TF-interop module needs; `ntk` never imports that module.
python -m pip install -q --no-deps neural-tangents==0.6.5
python -m pip install -q -e '.[test,ntk]'
