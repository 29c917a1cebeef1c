#!/usr/bin/env bash
# The un²CLIP training-step ladder on one GPU (H100 / H200), real architectures with random weights
# (no download): OpenAI ViT-L/14 @224 + Stable unCLIP small (SD 2.1 UNet 865 M + SD VAE) at 768 px,
# and the same pair with the decoder at 512 px. Each rung runs in a fresh process.
#
#   bash benchmarks/run_gpu.sh            # writes benchmarks/results/gpu-*.{md,json}
#   BATCH=16 bash benchmarks/run_gpu.sh   # another decoder batch (image-timestep pairs per step)
set -euo pipefail
cd "$(dirname "$0")/.."
UN2CLIP=${UN2CLIP:-.venv/bin/un2clip}
BATCH=${BATCH:-8}
OUT=benchmarks/results
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu-device.txt"
uptime | tee -a "$OUT/gpu-device.txt"

# 768 px: the preset as the paper trains it
"$UN2CLIP" bench --ladder --preset openai-l14 --random-weights --device cuda --batch-size "$BATCH" \
    --steps 10 --warmup 3 --markdown "$OUT/gpu-openai-l14-768.md" --json "$OUT/gpu-openai-l14-768.json"

# 512 px: the same UNet and VAE on 64 x 64 latents
"$UN2CLIP" bench --ladder --preset openai-l14 --random-weights --device cuda --decoder-size 512 \
    --batch-size "$BATCH" --steps 10 --warmup 3 \
    --markdown "$OUT/gpu-openai-l14-512.md" --json "$OUT/gpu-openai-l14-512.json"
uptime | tee -a "$OUT/gpu-device.txt"
