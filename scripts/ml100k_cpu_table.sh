#!/usr/bin/env bash
# The ml-100k rows of docs/results.md, trained on this machine's CPU (profile `cpu`: lean
# recommendation LLM, d_model 128, 2 layers, last pooling), one variant after another.
#   lite-rec ingest ml-100k && lite-rec embed ml-100k        # processed data + item vectors
#   bash scripts/ml100k_cpu_table.sh data/processed/ml-100k \
#     data/runs/ml-100k/item_vectors/sentence-transformers--all-MiniLM-L6-v2/vectors.safetensors out/ml100k
set -euo pipefail
PROC=$1 VEC=$2 OUT=$3
PY=${PYTHON:-.venv/bin/python}
COMMON="train.device=cpu train.max_epochs=30 train.patience=5 model.max_seq_len=50"
"$PY" scripts/gpu_suite.py --dataset ml-100k --profile cpu --processed-dir "$PROC" --item-vectors "$VEC" \
  --out "$OUT" --runs-dir "$OUT/runs" --common $COMMON \
  --variant "text-onepass: model.item_repr=text" \
  --variant "text-onepass-stage2: model.item_repr=text train.finetune_epochs=5 train.finetune_lr=2e-4" \
  --variant "id-onepass: model.item_repr=id" \
  --variant "textid-onepass: model.item_repr=text+id" \
  --variant "text-onepass-stage2-nohist: model.item_repr=text train.finetune_epochs=5 train.finetune_lr=2e-4 train.loss_excludes_history=true" \
  --variant "text-sampling: model.item_repr=text train.strategy=sampling model.max_seq_len=20 train.max_epochs=300 train.eval_every=5"
