#!/usr/bin/env bash
# The one GPU check, at most ~10 minutes on one H100/H200, every figure as a
# table under OUT_DIR (copy the tables into docs/results/ with their rows):
#   1. TIGER's Beauty recipe (gin/recommendation/tiger_beauty.gin: RQ-VAE IDs, the
#      paper's model, batch 256) for TIGER_SECONDS of training: its published
#      budget (200k steps) does not fit in the check, so the row says how far
#      it got (steps, epochs) and where its curve stands;
#   2. the item-level Semantic-ID recipe (gin/recommendation/beauty_item_sid.gin)
#      for ITEM_SECONDS;
#      (1 and 2 share tiger_table_gpu.md with their test metrics on all users)
#   3. one epoch's cost and the train step's model FLOP utilization of the
#      packed encoder-decoder, SASRec and the item-level model (epoch_cost);
#   4. trie-constrained beam search over a 1M-item catalog (decoding).
# Usage: tpu_scripts/gpu_check.sh [--dry_run] [--smoke] OUT_DIR
#   --smoke: tiny budgets, the synthetic catalog and a 2,000-item decoding
#   row, for a CPU (the test runs it); DATA_DIR (env) defaults to ../shared/data.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
  SMOKE=1
  shift
fi
[ $# -eq 1 ] || usage_lines 2 15
OUT=$1
DATA_DIR=${DATA_DIR:-../shared/data}
cd "$(dirname "$0")/.."

if [ "$SMOKE" = 1 ]; then
  TIGER_SECONDS=3 ITEM_SECONDS=3 CATALOG=2000 DATASET=synthetic STEPS=1
  DATA=(--gin_file=gin/budgets/smoke.gin)
else
  TIGER_SECONDS=240 ITEM_SECONDS=120 CATALOG=1000000 DATASET=beauty STEPS=5
  DATA=(--gin_bindings="DATA_DIR='$DATA_DIR'" --gin_bindings="train.train.eval_every_steps=1000"
        --gin_bindings="train.train.checkpoint_every_steps=1000")
fi
COMMON=(--gin_bindings="train.train.report_unconstrained=False")

run mkdir -p "$OUT/runs"
run python main.py --gin_file=gin/recommendation/tiger_beauty.gin "${DATA[@]}" "${COMMON[@]}" \
  --gin_bindings="train.train.max_train_seconds=$TIGER_SECONDS" --workdir="$OUT/runs/tiger_beauty"
run python main.py --gin_file=gin/recommendation/beauty_item_sid.gin "${DATA[@]}" "${COMMON[@]}" \
  --gin_bindings="train.train.max_train_seconds=$ITEM_SECONDS" --workdir="$OUT/runs/item_sid"
run python -m genrec.benchmarks.tiger_table --runs="$OUT/runs" --table_dir="$OUT" \
  --table_stem=tiger_table_gpu
run python -m genrec.benchmarks.epoch_cost --data_dir="$DATA_DIR" --dataset="$DATASET" \
  --models=encoder_decoder_packed,sasrec,item_sid --steps="$STEPS" --output_dir="$OUT"
run python -m genrec.benchmarks.decoding --catalog_sizes="$CATALOG" --beams=10 --reps=3 \
  --output_dir="$OUT"
