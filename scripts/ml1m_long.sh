#!/usr/bin/env bash
# ML-1m: the heavier-dropout T5-small-sized row (text-L6d512-do5 of docs/results.md's sweep was still
# improving at its 60-epoch cap), longer and with stage 2; two gpu_suite.py processes side by side.
#   bash scripts/ml1m_long.sh <processed-dir> <vectors.safetensors> <out-dir> [seconds-limit]
set -u
PROC=$1 VEC=$2 OUT=$3 LIMIT=${4:-540}
PYTHON=${PYTHON:-python3} EXTRA=${EXTRA:-}
BASE="model.backbone=lean train.strategy=onepass model.max_seq_len=200 model.pooling=last train.batch_size=128 train.lr=5e-4 train.warmup_ratio=0.05 train.device=cuda model.item_repr=text model.dropout=0.5 model.backbone_dropout=0.2 train.patience=15"
run() {  # group, variant
  timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile paper \
    --out "$OUT/$1" --runs-dir "/tmp/long-$1" --common $BASE --variant "$2 $EXTRA" > "$OUT/$1.log" 2>&1
}
mkdir -p "$OUT"
run e90 "text-L6d512-do5-e90-ft: train.max_epochs=90 train.finetune_epochs=5 train.finetune_lr=1e-4" &
run e70s100 "text-L6d512-do5-s100-ft: train.onepass_stride=100 train.max_epochs=45 train.finetune_epochs=5 train.finetune_lr=1e-4" &
wait
tail -n 2 "$OUT"/*.log
