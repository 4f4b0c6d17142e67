#!/usr/bin/env bash
# benchmarks/gpu_wheels.sh [PYTHON_VERSION]    (here, with PyPI; then carry benchmarks/wheels/ to the GPU machine)
#
# The packages llmkit needs that the GPU machine lacks (docs: ../shared/ENVIRONMENT.md; it has no network):
# datasets and evaluate (finetune's data and metrics) with dill, multiprocess, xxhash and evaluate's requests
# (with urllib3 and charset-normalizer; idna and certifi come with httpx there), and seqeval (token
# classification's entity metrics; published as source only, so built here into a pure-Python wheel). Downloaded as wheels
# for CPython PYTHON_VERSION (default 3.12, the GPU machine's) into benchmarks/wheels/pyXY/ (ignored by git),
# pinned to the versions llmkit is tested with here. benchmarks/gpu_check.sh installs them there with
# `pip install --no-index --no-deps --target` into a temporary folder. Prints the folder's size (well under 40 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
dest="benchmarks/wheels/py${version/./}"
PYTHON="${PYTHON:-python3}"
rm -rf "$dest"
mkdir -p "$dest"
"$PYTHON" -m pip download --quiet --dest "$dest" --python-version "$version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --only-binary=:all: --no-deps \
  datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 \
  requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$dest" seqeval==1.2.2
ls -1 "$dest"
du -sh "$dest" | awk -v d="$dest" '{print "wheels: " d " " $1}'
