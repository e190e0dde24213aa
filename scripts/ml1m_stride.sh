#!/usr/bin/env bash
# ML-1m: overlapping onepass windows (train.onepass_stride < max_seq_len), four side-by-side
# scripts/gpu_suite.py processes on one GPU (docs/results.md, "What we tried").
#   bash scripts/ml1m_stride.sh <processed-dir> <vectors.safetensors> <out-dir> [seconds-limit]
set -u
PROC=$1 VEC=$2 OUT=$3 LIMIT=${4:-540}
PYTHON=${PYTHON:-python3} EXTRA=${EXTRA:-}
BEST="model.backbone=lean train.strategy=onepass model.max_seq_len=200 model.pooling=last model.dropout=0.3 train.batch_size=128 train.lr=5e-4 train.warmup_ratio=0.05 train.device=cuda model.item_repr=text"
SMALL="model.d_model=256 model.n_layers=2 model.n_heads=4 model.d_ff=1024 model.dropout=0.3 model.backbone_dropout=0.2 train.lr=1e-3"
run() {  # group, variant
  timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile paper \
    --out "$OUT/$1" --runs-dir "/tmp/stride-$1" --common $BEST --variant "$2 $EXTRA" > "$OUT/$1.log" 2>&1
}
mkdir -p "$OUT"
run s50 "text-L6d512-s50-ft: train.onepass_stride=50 train.max_epochs=14 train.patience=5 train.finetune_epochs=3 train.finetune_lr=1e-4" &
run s100 "text-L6d512-s100-ft: train.onepass_stride=100 train.max_epochs=24 train.patience=6 train.finetune_epochs=5 train.finetune_lr=1e-4" &
run s100do "text-L6d512-s100-do4: train.onepass_stride=100 model.dropout=0.4 model.backbone_dropout=0.1 train.max_epochs=24 train.patience=6" &
run small50 "text-L2d256-s50: train.onepass_stride=50 $SMALL train.max_epochs=60 train.patience=10" &
wait
tail -n 2 "$OUT"/*.log
