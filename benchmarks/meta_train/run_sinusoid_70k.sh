#!/usr/bin/env bash
# Finn et al. 2017 sinusoid setting, full budget: K=10 (10 query points), MLP 1-40-40-1,
# one inner SGD step at 0.01, meta-batch 25, Adam 1e-3, 70,000 meta-iterations, no clipping.
# Held-out: 600 tasks (fixed seeds), MSE after 0, 1 and 10 inner steps, evaluated every 5000 iterations.
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 nice -n 10 python scripts/meta_train.py \
    --task sinusoid --num-shots 10 --inner-lr 0.01 --inner-steps 1 \
    --meta-batch-size 25 --outer-lr 1e-3 --iterations 70000 --seed 0 \
    --num-eval-tasks 600 --eval-steps 0,1,10 --eval-every 5000 \
    --vectorize --threads 1 --log-every 100 --checkpoint-every 5000 --no-progress \
    --out benchmarks/meta_train/sinusoid_70k "$@"
