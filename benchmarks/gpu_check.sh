#!/usr/bin/env bash
# One prepared check on a machine with an NVIDIA GPU (issue 6): the step and rule benchmarks, the
# 4096-worker Krum run (target: 300 steps under 60 s on one H100) and a batched slice of the
# paper's Fashion-MNIST grid, then one summary with the card's name. Everything it writes goes
# under $OUT (default benchmarks/results/gpu-<date>).
#
#   bash benchmarks/gpu_check.sh                 # from the repository root, jax[cuda] installed
#   PYTHONPATH=. bash benchmarks/gpu_check.sh    # from a copied working tree, without installing
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh --allow-cpu   # tiny shapes: test the script
#
# Fashion-MNIST is read from $JAXBYZ_DATA_DIR or Debian's folder; without it the grid slice runs
# on synthetic data of the same shape (same programs and costs; the summary says which).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # let the device peak reflect what a step needs
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

platform=$("$PY" -c 'import jax; print(jax.devices()[0].platform)')
if [ "$platform" != "gpu" ] && [ "${1:-}" != "--allow-cpu" ]; then
  echo "gpu_check: JAX sees no GPU (platform: $platform); install jax[cuda12] or pass --allow-cpu" >&2
  exit 2
fi
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || "$PY" -c 'import jax; print(jax.devices()[0].device_kind)')

if [ -n "${GPU_CHECK_QUICK:-}" ]; then   # a dry run of this script on any machine
  STEP_N="51 256"; STEP_STEPS=2; BIG_N=256; BIG_F=63; BIG_STEPS=10; SLICE_SEEDS=1; SLICE_STEPS=20
  SLICE_EXTRA=(--set 'gar=["krum"]')
  AGG_ARGS=(--rules average median krum bulyan --n 51 --d 10000 --repeats 2 --no-numpy)
else
  STEP_N="51 256 1024 4096 16384"; STEP_STEPS=10; BIG_N=4096; BIG_F=1023; BIG_STEPS=300
  SLICE_SEEDS=1-5; SLICE_STEPS=300; SLICE_EXTRA=()
  AGG_ARGS=(--rules average median trmean krum bulyan cge --n 51 256 1024 4096 --d 100000
            --repeats 5 --budget 20 --max-gb 20 --no-numpy)
fi

echo "== gpu_check on: $card ($(date -u +%Y-%m-%dT%H:%MZ))"
started=$(date +%s)

echo "== 1. step throughput (benchmarks/step.py)"
# shellcheck disable=SC2086
"$PY" benchmarks/step.py --n $STEP_N --steps "$STEP_STEPS" --repeats 3 --budget 30 \
  --max-gb 60 --out "$OUT/step" | tee "$OUT/step.log"

echo "== 2. rules alone (benchmarks/aggregators.py)"
"$PY" benchmarks/aggregators.py "${AGG_ARGS[@]}" --out "$OUT/aggregators" | tail -n 40

echo "== 3. $BIG_N workers x $BIG_STEPS steps, krum, MNIST MLP (target: < 60 s on one H100)"
rm -rf "$OUT/big-krum"
"$PY" -m jaxbyz.train --dataset synthetic --nb-workers "$BIG_N" --nb-decl-byz "$BIG_F" \
  --gar krum --attack little --attack-args factor:1.5 negative:True --momentum-at worker \
  --nb-steps "$BIG_STEPS" --evaluation-delta 50 --no-progress --result-directory "$OUT/big-krum" \
  | tee "$OUT/big-krum.txt"

echo "== 4. a batched slice of the paper's Fashion-MNIST grid (lr 0.5, no Nesterov)"
data_note="real Fashion-MNIST"
dataset_override=()
if ! "$PY" -c 'from jaxbyz.data import load_dataset; load_dataset("fashion-mnist")' 2>/dev/null; then
  data_note="synthetic data of Fashion-MNIST's shape (dataset not found)"
  dataset_override=(--set dataset=synthetic)
fi
slice_started=$(date +%s)
"$PY" -m jaxbyz.experiments.sweep paper-fashion-mnist --seeds "$SLICE_SEEDS" \
  --set momentum_nesterov=false --set learning_rate=0.5 --set nb_steps="$SLICE_STEPS" \
  "${dataset_override[@]}" "${SLICE_EXTRA[@]}" --max-batch 64 --no-progress --cache-dir none --no-plots \
  --output "$OUT/grid-slice" | tail -n 8
slice_s=$(( $(date +%s) - slice_started ))

echo "== summary"
"$PY" - "$OUT" "$card" "$data_note" "$slice_s" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
out, card, data_note, slice_s, total_s = sys.argv[1:]
print(f"card: {card}")
for row in json.loads(Path(out, "step.json").read_text())["rows"]:
    if "skipped" in row:
        print(f"step {row['rule']:8s} n={row['n']:6d}: skipped ({row['skipped']})")
        continue
    print(f"step {row['rule']:8s} n={row['n']:6d}: {row['step_ms']:9.1f} ms/step "
          f"{row['gradients_per_s']:12,.0f} gradients/s, compile {row['compile_s']:.1f} s, "
          f"device peak {row['device_peak_gb'] or float('nan'):.2f} GB, rule {row['rule_ms']:.1f} ms")
summary = json.loads(Path(out, "big-krum", "summary.json").read_text())
print(f"big krum run: {summary['steps']} steps, run {summary['run_seconds']:.1f} s + compile "
      f"{summary['compile_seconds']:.1f} s, best accuracy {summary['best_accuracy']:.3f}")
runs = pd.read_csv(Path(out, "grid-slice", "runs.csv"))
print(f"grid slice ({data_note}): {len(runs)} runs, {(runs.status == 'completed').sum()} completed, "
      f"{slice_s} s wall; {float(slice_s) / len(runs):.2f} s per run")
print(f"gpu_check total: {total_s} s")
EOF
