#!/usr/bin/env bash
# The GPU check: on a CUDA machine, profile the family and sampled architectures at batch 1 and 64,
# calibrate on one set, validate on another (the family plus samples), and write each batch size's
# metrics as JSON. The brief protocol (a tenth of the time budgets; CUDA events are steady) fits
# a short device lease. Then host CPU -> CUDA transfer (issue 14): the CPU's table and 10 CUDA runs
# against CUDA's own table and a FLOPs fit, on 10 held-out networks.
# Usage: bench/gpu_check.sh [OUTDIR] [N_CALIBRATION] [N_VALIDATION]
set -u
out=${1:-bench/results}
n_cal=${2:-10}
n_val=${3:-10}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
for batch in 1 64; do
    echo "== batch $batch"
    python3 bench/accuracy.py --device cuda --batch "$batch" --protocol brief --calibration "$n_cal" \
        --validation "$n_val" --db "$out/gpu.sqlite" --out "$out/gpu_b$batch.json" 2>&1 | tail -12
done
echo "== transfer cpu -> cuda"
python3 bench/transfer.py --pairs cpu:cuda --runs 5,10 --held-out 10 --protocol brief \
    --db "$out/gpu-transfer.sqlite" --out "$out/gpu_transfer.json" 2>&1 | tail -12
