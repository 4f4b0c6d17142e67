#!/usr/bin/env bash
# The README's benchmark table: every row's command, one after another, on one machine in one state.
#
#   bash benchmarks/table.sh [WORK_DIR]      # ~50 min on 2 cores; nothing else should run meanwhile
#   python benchmarks/readme_figures.py       # then: is every README figure one this run printed?
#
# Each benchmark prints its table and writes JSON to benchmarks/results/. This script adds the machine's load
# average before each step (the figures are comparable only when it stays below the core count), and the wall
# time and peak RSS of the README's first command (`llmkit pretrain cpu-quick`) from an empty cache; its run
# is then the trained model that fill-mask and serve are measured on.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d /tmp/llmkit-table-XXXX)}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
step() { echo; echo "=== $* (load average $(cut -d' ' -f1-3 /proc/loadavg), $(date +%H:%M:%S))"; }

step "first command: llmkit pretrain cpu-quick, empty cache"
LLMKIT_CACHE="$work/cache" /usr/bin/time -f "wall %e s, peak RSS %M KB" \
  llmkit pretrain cpu-quick -o "$work/cpu-quick" 2>&1 | grep -v "^llmkit: step .*  loss" | tail -6
llmkit fill-mask "$work/cpu-quick" "Convert the string to an [MASK] and return it." \
  "Wait until the child [MASK] terminates."
step "first run's probes";  python "$here/first_run.py"

step "collation";  python "$here/collation.py"
step "pretrain";   python "$here/pretrain.py" --steps 60 --warmup 5 --variants llmkit,hf,llmkit-seed2,hf-seed2 \
                     --eval-blocks 128
step "fill-mask";  python "$here/fill_mask.py" --model "$work/cpu-quick"
step "predict";    python "$here/predict.py"
step "serve";      python "$here/serve.py" --model "$work/cpu-quick" --clients 1,8,32 --seconds 10 --rounds 2
step "finetune";   python "$here/finetune.py" --repeats 1
step "profile";    python "$here/profile_step.py"
step "ner";        python "$here/ner.py" --train 300 --test 100 --epochs 4 --seeds 3
step "ner, natural lengths"
python "$here/ner.py" --train 1000 --test 200 --epochs 3 --words 1-60 --max-length 128 --seeds 3
step "onnx parity"; python "$here/onnx_parity.py"
step "data at scale"; python "$here/data_scale.py" --sizes 10,100 --hf-sizes 10,100
step "a bad path"
/usr/bin/time -f "fails in %e s" llmkit pretrain --data "$work/missing.txt" || true
step "done"
