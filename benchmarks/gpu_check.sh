#!/usr/bin/env bash
# benchmarks/gpu_check.sh    (on a machine with a CUDA GPU; about 6-8 minutes on one H100/H200)
#
# 1. the GPU tests (tests/test_gpu.py: placement, bf16/fp16, the masked-positions head against the full head under
#    CUDA bf16, pretrain/finetune/fill-mask/predict end to end, resume, FSDP with one rank, half-precision
#    checkpoints, loader workers, host syncs in a step, Ctrl-C under torchrun, --num-processes beyond the GPUs);
# 2. pretrain, finetune and fill-mask against plain Hugging Face on the GPU (tokens/s, examples/s, sentences/s,
#    ratios, and MFU against the GPU's published peak).
# Everything printed is also under benchmarks/results/ (gpu-check-*.log and each benchmark's JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
mkdir -p benchmarks/results
log="benchmarks/results/gpu-check-$(date +%Y%m%d-%H%M%S).log"
status=0
exec > >(tee "$log") 2>&1
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "== GPU tests"
timeout 300 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider || status=1
echo "== pretrain: llmkit vs plain HF (mini BERT, seq 128, batch 32)"
timeout 150 python benchmarks/pretrain.py --steps 40 --warmup 10 --variants llmkit,hf,hf-bf16 --corpus-mb 2 \
  --eval-blocks 32 || status=1
echo "== finetune: llmkit vs plain HF (MiniLM, 8 topics)"
timeout 120 python benchmarks/finetune.py --quick || status=1
echo "== fill-mask: llmkit vs pipeline"
timeout 90 python benchmarks/fill_mask.py --quick --no-onnx || status=1
echo "log: $log"
exit $status
