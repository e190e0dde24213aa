#!/usr/bin/env bash
# ML-1m follow-ups of scripts/ml1m_sweep.sh on one GPU (docs/results.md, session-3 sweep), each set
# as scripts/gpu_suite.py processes side by side, each writing $OUT/<group>/results.json when done.
#   bash scripts/ml1m_variants.sh stride|long|head|loss|seeds|minilm|future|knobs|textid|ema|emalong|refit|profile|ensemble <processed-dir> <vectors.safetensors> <out-dir> [seconds-limit]
#   stride: overlapping onepass windows (train.onepass_stride < max_seq_len), four processes
#   long:   dropout 0.5 (text-L6d512-do5 was still improving at its cap), longer, with stage 2; two processes
#   head:   the dropout-0.5 recipe with a tied head and/or cosine scores (model.head, model.score); four processes
#   loss:   the same recipe with train.loss_excludes_history and/or a cosine lr schedule, beside its control
#   seeds:  the loss set's control and train.loss_excludes_history=true, seeds 1 and 2
#   minilm: the recommendation LLM initialised from pretrained all-MiniLM-L6-v2 (its body, without the
#           word-embedding table, in $MINILM, default .carry/minilm-body, written by
#           scripts/export_encoder_body.py), beside the same architecture from random weights; stage 1 capped at
#           $BUDGET minutes (train.max_stage1_minutes, default 6.8) so four runs fit one device call
#   future: the history-free recipe with train.future_targets (the next 3 or 5 items supervised at every
#           position, later ones at train.future_weight), and one with the plain loss for the unmasked rows
#   knobs:  the history-free recipe with batch 64, lr 1e-3, a longer/faster stage 2, or text+id inputs
#   textid: text+id inputs at lr 1e-3 (the two best knobs together), history-free loss over seeds 42, 1, 2,
#           and its plain-loss control
#   ema:    the textid recipe validated and kept as an EMA of its weights (train.ema_decay 0.999 / 0.9997: the same
#           average on runs this short, its warm-up decides; lite_rec/ema.py),
#           and at lr 2e-3 with and without the EMA
#   emalong: lr 2e-3 + EMA 0.999 for $EPOCHS (default 70) stage-1 epochs, history-free ("nohist") or plain
#           ("plain") softmax; RUNS="nohist42 nohist1 plain42" picks the runs (kind + seed), three side by side
#           fit one call at 70 epochs
#   refit:  the emalong recipe refitted on train + validation item (train.fit_on=train+valid: 70 epochs, the
#           best epoch of its validated runs; no validation, no stage 2, the last EMA weights are tested)
#   profile: --profile gpu with the overrides of each "name: key=value ..." entry of $VARIANTS (entries
#           separated by "|"), side by side, e.g. VARIANTS="L300: model.max_seq_len=300|bd01: model.backbone_dropout=0.1"
#   ensemble: --profile gpu as shipped, one run per seed in $SEEDS (default "42 1 2") side by side, then
#           scripts/ensemble_eval.py scores them alone and as an ensemble ($OUT/ensemble.json)
# EPOCHS=N sets the stage-1 epochs of emalong and refit (and their names' "e70").
# EXTRA="key=value ..." is appended to every variant (last wins), as in ml1m_sweep.sh. Checkpoints go to
# /tmp/ml1m-<set>-<basename of out-dir>-<group>: give concurrent invocations different out-dirs.
set -u
SET=$1 PROC=$2 VEC=$3 OUT=$4 LIMIT=${5:-540}
PYTHON=${PYTHON:-python3} EXTRA=${EXTRA:-}
BASE="model.backbone=lean train.strategy=onepass model.max_seq_len=200 model.pooling=last train.batch_size=128 train.lr=5e-4 train.warmup_ratio=0.05 train.device=cuda model.item_repr=text"
SMALL="model.d_model=256 model.n_layers=2 model.n_heads=4 model.d_ff=1024 model.dropout=0.3 model.backbone_dropout=0.2 train.lr=1e-3"
DO5="model.dropout=0.5 model.backbone_dropout=0.2 train.patience=15"
run() {  # group, variant
  timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile paper \
    --out "$OUT/$1" --runs-dir "/tmp/ml1m-$SET-$(basename "$OUT")-$1" --common $BASE --variant "$2 $EXTRA" > "$OUT/$1.log" 2>&1
}
recipe_runs() {  # name prefix, name suffix, overrides: the session-6 recipe for each of $RUNS (kind + seed), side by side
  for r in ${RUNS:-nohist42 nohist1 plain42}; do
    seed=${r//[a-z]/} kind=${r//[0-9]/}
    case "$kind" in
      nohist) run "$r" "$1textid-nohist-lr2e3-ema999-e$EPOCHS$2-seed$seed: $3 train.loss_excludes_history=true train.seed=$seed" & ;;
      plain) run "$r" "$1textid-lr2e3-ema999-e$EPOCHS$2-seed$seed: $3 train.seed=$seed" & ;;
      *) echo "unknown run '$r' (nohist<seed> or plain<seed>)" >&2; exit 2 ;;
    esac
  done
}
EPOCHS=${EPOCHS:-70}
# A run killed by the limit has no test metrics (the same command again resumes it from its checkpoints).
# Past the stage-1 budget a run still needs about 150 s on an H100 (compiling, the epoch that crosses the
# budget, stage 2, the test; session 14 lost two runs with 107-108 s left): say so before spending the GPU.
[ -n "${BUDGET:-}" ] && awk -v limit="$LIMIT" -v budget="$BUDGET" 'BEGIN { left = limit - 60 * budget; if (left < 170)
  printf "warning: a %s s limit leaves %.0f s after the %s-min stage-1 budget; runs need about 150 s more\n", limit, left, budget > "/dev/stderr" }'
MODELS="/tmp/ml1m-$SET-$(basename "$OUT")"  # the ensemble set's trained models, one folder per seed
E70="$DO5 train.max_epochs=$EPOCHS train.max_stage1_minutes=${BUDGET:-8.3} model.item_repr=text+id train.lr=2e-3 train.ema_decay=0.999"
mkdir -p "$OUT"
case "$SET" in
  stride)
    run s50 "text-L6d512-s50-ft: model.dropout=0.3 train.onepass_stride=50 train.max_epochs=14 train.patience=5 train.finetune_epochs=3 train.finetune_lr=1e-4" &
    run s100 "text-L6d512-s100-ft: model.dropout=0.3 train.onepass_stride=100 train.max_epochs=24 train.patience=6 train.finetune_epochs=5 train.finetune_lr=1e-4" &
    run s100do "text-L6d512-s100-do4: train.onepass_stride=100 model.dropout=0.4 model.backbone_dropout=0.1 train.max_epochs=24 train.patience=6" &
    run small50 "text-L2d256-s50: train.onepass_stride=50 $SMALL train.max_epochs=60 train.patience=10" & ;;
  long)
    run e90 "text-L6d512-do5-e90-ft: $DO5 train.max_epochs=90 train.finetune_epochs=5 train.finetune_lr=1e-4" &
    run e70s100 "text-L6d512-do5-s100-ft: $DO5 train.onepass_stride=100 train.max_epochs=45 train.finetune_epochs=5 train.finetune_lr=1e-4" & ;;
  head)
    H="$DO5 train.max_epochs=50 train.finetune_epochs=3 train.finetune_lr=1e-4"
    run tied "text-do5-tied-ft: $H model.head=tied" &
    run tiedcos "text-do5-tied-cos05-ft: $H model.head=tied model.score=cosine model.temperature=0.05" &
    run lincos "text-do5-cos05-ft: $H model.score=cosine model.temperature=0.05" &
    run tiedcosid "textid-do5-tied-cos05-ft: $H model.item_repr=text+id model.head=tied model.score=cosine model.temperature=0.05" & ;;
  loss)
    H="$DO5 train.max_epochs=50 train.finetune_epochs=3 train.finetune_lr=1e-4"
    run control "text-do5-ft: $H" &
    run nohist "text-do5-nohist-ft: $H train.loss_excludes_history=true" &
    run nohistid "textid-do5-tied-cos05-nohist-ft: $H model.item_repr=text+id model.head=tied model.score=cosine model.temperature=0.05 train.loss_excludes_history=true" &
    run lrcos "text-do5-lrcos-ft: $H train.lr_schedule=cosine" & ;;
  seeds)
    H="$DO5 train.max_epochs=50 train.finetune_epochs=3 train.finetune_lr=1e-4"
    for seed in 1 2; do
      run "control$seed" "text-do5-ft-seed$seed: $H train.seed=$seed" &
      run "nohist$seed" "text-do5-nohist-ft-seed$seed: $H train.loss_excludes_history=true train.seed=$seed" &
    done ;;
  minilm)
    M="model.backbone=${MINILM:-.carry/minilm-body} $DO5 train.max_epochs=200 train.max_stage1_minutes=${BUDGET:-6.8} train.finetune_epochs=3 train.finetune_lr=1e-4"
    run mini "minilm-nohist-ft: $M train.loss_excludes_history=true" &
    run minictl "minilm-ft: $M" &
    run minirand "minilm-random-nohist-ft: $M model.pretrained=false train.loss_excludes_history=true" &
    run miniid "minilm-textid-nohist-ft: $M model.item_repr=text+id train.loss_excludes_history=true" & ;;
  future)
    H="$DO5 train.max_epochs=50 train.max_stage1_minutes=${BUDGET:-7.2} train.finetune_epochs=3 train.finetune_lr=1e-4"
    run f3 "text-do5-nohist-f3w05-ft: $H train.loss_excludes_history=true train.future_targets=3 train.future_weight=0.5" &
    run f5 "text-do5-nohist-f5w05-ft: $H train.loss_excludes_history=true train.future_targets=5 train.future_weight=0.5" &
    run f3w1 "text-do5-nohist-f3w1-ft: $H train.loss_excludes_history=true train.future_targets=3 train.future_weight=1.0" &
    run f3ctl "text-do5-f3w05-ft: $H train.future_targets=3 train.future_weight=0.5" & ;;
  knobs)
    H="$DO5 train.max_epochs=50 train.max_stage1_minutes=${BUDGET:-7.2} train.finetune_epochs=3 train.finetune_lr=1e-4 train.loss_excludes_history=true"
    run b64 "text-do5-nohist-b64-ft: $H train.batch_size=64" &
    run lr1e3 "text-do5-nohist-lr1e3-ft: $H train.lr=1e-3" &
    run ft5 "text-do5-nohist-ft5-lr3e4: $H train.finetune_epochs=5 train.finetune_lr=3e-4" &
    run textid "textid-do5-nohist-ft: $H model.item_repr=text+id" & ;;
  textid)
    H="$DO5 train.max_epochs=50 train.max_stage1_minutes=${BUDGET:-7.0} train.finetune_epochs=3 train.finetune_lr=1e-4 model.item_repr=text+id train.lr=1e-3"
    for seed in 42 1 2; do
      run "nohist$seed" "textid-do5-nohist-lr1e3-ft-seed$seed: $H train.loss_excludes_history=true train.seed=$seed" &
    done
    run control "textid-do5-lr1e3-ft: $H" & ;;
  ema)
    H="$DO5 train.max_epochs=50 train.max_stage1_minutes=${BUDGET:-7.0} train.finetune_epochs=3 train.finetune_lr=1e-4 model.item_repr=text+id train.lr=1e-3 train.loss_excludes_history=true"
    run ema999 "textid-nohist-ema999-ft: $H train.ema_decay=0.999" &
    run ema9997 "textid-nohist-ema9997-ft: $H train.ema_decay=0.9997" &
    run lr2e3 "textid-nohist-lr2e3-ft: $H train.lr=2e-3" &
    run lr2e3ema "textid-nohist-lr2e3-ema999-ft: $H train.lr=2e-3 train.ema_decay=0.999" & ;;
  emalong)
    recipe_runs "" "-ft" "$E70 train.finetune_epochs=3 train.finetune_lr=1e-4" ;;
  refit)
    recipe_runs "refit-" "" "$E70 train.fit_on=train+valid" ;;
  profile)
    IFS='|' read -r -a entries <<< "${VARIANTS:?profile needs VARIANTS=\"name: key=value ...|...\"}"
    for entry in "${entries[@]}"; do
      name=$(echo "${entry%%:*}" | tr -d ' ')
      timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile gpu \
        --out "$OUT/$name" --runs-dir "$MODELS" \
        --common train.device=cuda train.max_stage1_minutes=${BUDGET:-8.3} $EXTRA --variant "$entry" > "$OUT/$name.log" 2>&1 &
    done ;;
  ensemble)
    for seed in ${SEEDS:-42 1 2}; do
      timeout "$LIMIT" "$PYTHON" scripts/gpu_suite.py --processed-dir "$PROC" --item-vectors "$VEC" --profile gpu \
        --out "$OUT/s$seed" --runs-dir "$MODELS" \
        --common train.device=cuda train.max_stage1_minutes=${BUDGET:-8.3} $EXTRA --variant "gpu-seed$seed: train.seed=$seed" \
        > "$OUT/s$seed.log" 2>&1 &
    done ;;
  *) echo "unknown set '$SET' (stride, long, head, loss, seeds, minilm, future, knobs, textid, ema, emalong, refit, profile or ensemble)" >&2; exit 2 ;;
esac
wait
if [ "$SET" = ensemble ]; then
  members=() && for seed in ${SEEDS:-42 1 2}; do members+=(--model "$MODELS/gpu-seed$seed"); done
  "$PYTHON" scripts/ensemble_eval.py --processed-dir "$PROC" "${members[@]}" --out "$OUT/ensemble.json" > "$OUT/ensemble.log" 2>&1
fi
tail -n 2 "$OUT"/*.log
