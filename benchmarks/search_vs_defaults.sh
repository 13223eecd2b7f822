#!/usr/bin/env bash
# Search vs paper defaults: what an hour of `tsearch search` on 2 cores buys over the samplers'
# reference settings, measured on the replication's evaluation seeds (which no search saw).
#   1. the quickstart search with an hour's budget (80 trials, TPE + ASHA, train.seed 0);
#   2. its best config, exported as `tsearch train` would run it;
#   3. that config retrained with seeds 101-103 at the replication's budget (20 kimg, FID every
#      2 kimg, no early stopping), a 3-cell grid labelled `search-best`;
#   4. one report of the replication and these 3 trials: the search's pick is a row beside the
#      methods at their defaults, with its speed-up over uniform.
# Needs the finished replication in the same store (`tsearch search
# experiments/replicate-digits.yaml`). FROM_STEP=N skips the steps before N (e.g. after step 1
# ran on its own); NUM_SAMPLES and OUT override the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=${TSEARCH:-.venv/bin/tsearch}
OUT=${OUT:-benchmarks/results/search-vs-defaults}
NUM_SAMPLES=${NUM_SAMPLES:-80}
FROM_STEP=${FROM_STEP:-1}

if ! "$TS" runs list | grep -q '^replicate-digits '; then
  echo "search_vs_defaults: no 'replicate-digits' search in the store; run" \
       "\`$TS search experiments/replicate-digits.yaml\` first (about an hour)" >&2
  exit 1
fi
mkdir -p "$OUT"
if (( FROM_STEP <= 1 )); then
  start=$(date +%s)
  "$TS" search experiments/quickstart.yaml --set search.num_samples="$NUM_SAMPLES" \
    --set search.name=quickstart-1h
  echo "search_vs_defaults: the search took $(( $(date +%s) - start )) s"
fi
if (( FROM_STEP <= 2 )); then
  "$TS" export best --search quickstart-1h -o "$OUT/best_config.yaml"
fi
if (( FROM_STEP <= 3 )); then
  "$TS" search "$OUT/best_config.yaml" --set search.name=search-best-digits \
    --set tracking.experiment=replicate-digits --set search.algorithm=grid \
    --set search.asha.enabled=false --set search.max_concurrent=2 \
    --set 'search.space={method: {bundle: {search-best: {}}}, train.seed: {choice: [101, 102, 103]}}'
fi
"$TS" report replicate-digits search-best-digits -o "$OUT"
