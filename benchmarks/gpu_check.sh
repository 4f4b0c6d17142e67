#!/usr/bin/env bash
# benchmarks/gpu_check.sh [--dry-run]     (on the GPU machine, as is: about 8 minutes, every stage under 480 s)
#
# Before, on a machine with PyPI:  benchmarks/gpu_wheels.sh   (what the GPU machine lacks, as cp312 wheels, ~1.5 MB)
# Then, there:                     OUT=/some/folder benchmarks/gpu_check.sh
# Here, to test this very script:  PYTHON=venv/bin/python benchmarks/gpu_check.sh --dry-run
#                                  (same stages, tiny sizes, on the CPU; tests/test_gpu_check.py runs it)
#
# Stages, each with its own time budget (140/200/70/50 s plus 5 s each to stop: 480 s together), each printing its
# figures even when another fails (and each variant's line as soon as it is done):
# 1. the GPU tests (tests/test_gpu.py; skipped on a machine without CUDA);
# 2. pretrain, llmkit vs plain HF: BERT-base and ModernBERT-base at seq 1024, 30 steps each, CUDA-synchronised step
#    timers, FLOPs per step, MFU against the GPU's dense bf16 peak (989 TFLOP/s for H100/H200 SXM), peak memory;
# 3. finetune, llmkit vs plain HF (a BERT-base classifier built here);
# 4. fill-mask and predict throughput in this process, llmkit vs transformers' pipeline.
# Python is $PYTHON (default python3); the tree is imported from here (nothing is installed); the wheels of
# benchmarks/wheels/pyXY go into a temporary folder (pip install --no-index --no-deps --target). Models, data and
# caches are built in a temporary folder and removed; the log and the results' JSON go to $OUT (default: a new
# folder under /tmp), never into the tree. Exit status: 0 when every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
PYTHON="${PYTHON:-python3}"
dry=""
if [[ "${1:-}" == "--dry-run" ]]; then dry="--dry-run"; elif [[ -n "${1:-}" ]]; then
  echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2
fi
out="${OUT:-$(mktemp -d /tmp/llmkit-gpu-check.XXXXXX)}"
mkdir -p "$out"
work="$(mktemp -d /tmp/llmkit-gpu-work.XXXXXX)"
trap 'rm -rf "$work"' EXIT
log="$out/gpu-check${dry:+-dry}.log"
exec > >(tee "$log") 2>&1
status=0

echo "== machine"
if [[ -z "$dry" ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
"$PYTHON" -c 'import sys, torch, transformers, accelerate; print("python", sys.version.split()[0], "torch",
torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else
"(no GPU)", "transformers", transformers.__version__, "accelerate", accelerate.__version__)' || status=1

# What the machine lacks (datasets, evaluate, ...) from the prepared wheels, into a temporary target.
tag="$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
if ! "$PYTHON" -c 'import datasets, evaluate' 2>/dev/null; then
  if ls "$root/benchmarks/wheels/$tag"/*.whl >/dev/null 2>&1; then
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
      "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$work/site" "$root/benchmarks/wheels/$tag"/*.whl
    else  # no pip there: these wheels need no build step, so unpacking them is installing them
      for wheel in "$root/benchmarks/wheels/$tag"/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$work/site"; done
    fi && echo "installed $(ls "$root/benchmarks/wheels/$tag" | wc -l) wheels from benchmarks/wheels/$tag into $work/site" \
      || status=1
  else
    echo "datasets/evaluate are missing and benchmarks/wheels/$tag has no wheels: run benchmarks/gpu_wheels.sh" \
      "${tag#py} where PyPI is reachable, and bring the folder (the finetune parts will fail without them)"
  fi
fi
export PYTHONPATH="$root:$work/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true HF_HOME="$work/hf-home"
export LLMKIT_CACHE="$work/cache" GPU_BENCH_WORK="$work/bench" OUT="$out" MPLCONFIGDIR="$work/mpl"

stage() {  # stage NAME BUDGET_S COMMAND...: runs it under its budget, reports its exit status and time
  local name="$1" budget="$2" start rc
  shift 2
  echo "== $name (budget ${budget} s)"
  start=$(date +%s)
  timeout -k 5 "$budget" "$@"
  rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "-- $name: ran past its ${budget} s budget"
  echo "-- $name: exit $rc after $(( $(date +%s) - start )) s"
  [[ $rc -eq 0 ]] || status=1
}

stage "GPU tests" 140 "$PYTHON" -m pytest -v -m gpu tests/test_gpu.py -p no:cacheprovider -o addopts="" -rs  # -v: a
# line per test as it ends, so a stage cut by its budget still shows what passed
stage "pretrain: llmkit vs plain HF" 200 "$PYTHON" benchmarks/gpu_bench.py pretrain $dry
stage "finetune: llmkit vs plain HF" 70 "$PYTHON" benchmarks/gpu_bench.py finetune $dry
stage "fill-mask and predict: llmkit vs pipeline" 50 "$PYTHON" benchmarks/gpu_bench.py inference $dry
echo "log: $log"
echo "gpu check: $([[ $status -eq 0 ]] && echo passed || echo FAILED)"
exit $status
