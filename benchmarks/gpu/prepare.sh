#!/usr/bin/env bash
# Run on a machine with PyPI (not the GPU machine): puts what the GPU check needs and a bare GPU image lacks into
# .gpu-carry/ (git-ignored through .git/info/exclude): the wheels of diffusers, pytorch-fid and importlib-metadata
# for Python 3.12, and real MNIST's four idx files. See benchmarks/gpu/README.md.
#   bash benchmarks/gpu/prepare.sh [MNIST_DIR]     # MNIST_DIR holds MNIST/raw/*-ubyte (default ../shared/data/mnist)
set -euo pipefail
cd "$(dirname "$0")/../.."
mnist="${1:-../shared/data/mnist}"
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
rm -rf .gpu-carry && mkdir -p .gpu-carry/whl .gpu-carry/data/MNIST/raw
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu-carry/whl diffusers==0.42.1 pytorch-fid==0.3.0 importlib-metadata==8.7.0
cp "$mnist"/MNIST/raw/*-ubyte .gpu-carry/data/MNIST/raw/
du -sh .gpu-carry
