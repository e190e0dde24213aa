#!/usr/bin/env bash
# ML-1m accuracy sweep on one GPU (docs/results.md, "What we tried"): four scripts/gpu_suite.py
# processes side by side (small models leave most of an H100 idle), each writing
# $OUT/<group>/results.json after every variant, so a call cut short keeps what finished.
#   bash scripts/ml1m_sweep.sh <processed-dir> <vectors.safetensors> <out-dir> [seconds-limit]
# EXTRA="key=value ..." is appended to every variant (last wins), e.g. a CPU dry run of the script:
#   PYTHON=.venv/bin/python EXTRA="train.device=cpu train.max_epochs=1 model.d_model=32 model.n_layers=1 \
#     model.n_heads=2 model.d_ff=64 model.max_seq_len=20" bash scripts/ml1m_sweep.sh ... /tmp/sweep-dry
set -u
PROC=$1 VEC=$2 OUT=$3 LIMIT=${4:-560}
PYTHON=${PYTHON:-python3} EXTRA=${EXTRA:-}
COMMON="model.backbone=lean train.strategy=onepass model.max_seq_len=200 model.pooling=last train.batch_size=128 train.warmup_ratio=0.05 train.device=cuda"
SMALL="model.n_heads=4 model.d_ff=1024 model.backbone_dropout=0.2 train.lr=1e-3 train.patience=15"
suite() {  # group, common overrides, variants...
  local group=$1 common=$2; shift 2
  local args=()
  for v in "$@"; do args+=(--variant "$v $EXTRA"); done
  timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile paper \
    --out "$OUT/$group" --runs-dir "/tmp/sweep-$group" --common $common "${args[@]}" > "$OUT/$group.log" 2>&1
}
mkdir -p "$OUT"
suite small "$COMMON" \
  "text-L2d256: model.d_model=256 model.n_layers=2 model.dropout=0.3 $SMALL train.max_epochs=150" \
  "text-L2d128: model.d_model=128 model.n_layers=2 model.dropout=0.2 $SMALL train.max_epochs=150" &
suite paper "$COMMON" \
  "text-L6d512-do5: model.dropout=0.5 model.backbone_dropout=0.2 train.lr=5e-4 train.max_epochs=60 train.patience=15" \
  "text-L6d512-cos: model.dropout=0.3 model.backbone_dropout=0.2 train.lr=5e-4 train.lr_schedule=cosine train.max_epochs=45 train.patience=45" &
suite sampling "model.backbone=lean train.strategy=sampling model.max_seq_len=20 train.device=cuda train.eval_every=10 train.patience=10" \
  "text-sampling-L20-paper: train.max_epochs=1500" \
  "text-sampling-L20-last: model.pooling=last model.dropout=0.3 train.max_epochs=1500" &
suite mid "$COMMON" \
  "text-L4d256: model.d_model=256 model.n_layers=4 model.dropout=0.3 $SMALL train.max_epochs=100" \
  "text-L2d256-bias: model.d_model=256 model.n_layers=2 model.dropout=0.3 model.head_bias=true $SMALL train.max_epochs=150" &
wait
tail -n 3 "$OUT"/*.log
