#!/usr/bin/env bash
# One prepared check on a machine with an NVIDIA GPU (issue 6), in order of importance: the
# 4096-worker Krum run (target: 300 steps under 60 s on one H100), the paper's Fashion-MNIST grid
# (target: its 920 runs under 10 minutes on one H100), the step benchmark and the rules alone,
# then one summary with the card's name. Every section has its own time limit inside an overall
# deadline (GPU_CHECK_SECONDS, default 540 s), so the script ends in time for a 10-minute device
# call and a section that fails or runs out of time leaves the others their figures. Everything
# it writes goes under $OUT (default benchmarks/results/gpu-<date>); the step and sweep results
# are written as they come, so a section cut short keeps what it finished.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root, jax[cuda] installed
#   PYTHONPATH=. bash benchmarks/gpu_check.sh    # from a copied working tree, without installing
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh --allow-cpu   # tiny shapes: test the script
#
# Fashion-MNIST is read from $JAXBYZ_DATA_DIR or Debian's folder; without it the grid runs on
# synthetic data of the same shape (same programs and costs; the summary says which).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-.}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # let the device peak reflect what a step needs
OUT="${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
started=$(date +%s)
deadline=$(( started + ${GPU_CHECK_SECONDS:-540} ))

# section NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (less if the deadline is
# nearer, keeping 15 s for the summary), its output in $OUT/NAME.log; record its status and time.
section() {
  local name=$1 budget=$2 left
  shift 2
  left=$(( deadline - $(date +%s) - 15 ))
  (( budget > left )) && budget=$left
  if (( budget < 10 )); then
    echo "== $name: skipped (the overall deadline is near)"
    echo "$name skipped 0" >> "$OUT/sections.txt"
    return
  fi
  echo "== $name (at most ${budget} s): $*"
  local begun rc
  begun=$(date +%s)
  timeout -k 10 "$budget" "$@" > >(tee "$OUT/$name.log") 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - begun ))" >> "$OUT/sections.txt"
  (( rc == 124 || rc == 137 )) && echo "== $name: stopped at its time limit (${budget} s)"
}

: > "$OUT/sections.txt"
section environment 60 "$PY" -c '
import importlib, sys
import jax
print("python", sys.version.split()[0], "| jax", jax.__version__, "| devices", jax.devices())
for name in ("jaxlib", "flax", "optax", "chex", "numpy", "pandas", "matplotlib", "tqdm"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"))
import jaxbyz.experiments.report, jaxbyz.simulator, jaxbyz.train  # noqa: F401
print("jaxbyz imports: ok")
'
platform=$("$PY" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null || echo none)
if [ "$platform" != "gpu" ] && [ "${1:-}" != "--allow-cpu" ]; then
  echo "gpu_check: JAX sees no GPU (platform: $platform); install jax[cuda12] or pass --allow-cpu" >&2
  exit 2
fi
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || "$PY" -c 'import jax; print(jax.devices()[0].device_kind)')
echo "== gpu_check on: $card ($(date -u +%Y-%m-%dT%H:%MZ))"

if [ -n "${GPU_CHECK_QUICK:-}" ]; then   # a dry run of this script on any machine
  BIG_N=256; BIG_F=63; BIG_STEPS=10
  GRID_ARGS=(--seeds 1 --set 'gar=["krum"]' --set nb_steps=20 --set momentum_nesterov=false)
  STEP_ARGS=(--n 51 256 --rules average krum --steps 2 --repeats 1)
  AGG_ARGS=(--rules median krum --n 51 --d 10000 --repeats 2)
  BUDGETS=(120 200 120 60)
else
  BIG_N=4096; BIG_F=1023; BIG_STEPS=300
  GRID_ARGS=()   # the whole grid: 184 configurations x 5 seeds, 92 programs
  STEP_ARGS=(--n 51 1024 4096 16384 --rules average median krum bulyan --steps 5 --repeats 2
             --budget 10)
  AGG_ARGS=(--rules average median trmean krum bulyan cge --n 1024 4096 --d 100000 --repeats 3
            --budget 10)
  BUDGETS=(90 240 120 40)
fi

rm -rf "$OUT/big-krum"
section big-krum "${BUDGETS[0]}" "$PY" -m jaxbyz.train --dataset synthetic \
  --model simples-full --nb-workers "$BIG_N" --nb-decl-byz "$BIG_F" --nb-real-byz "$BIG_F" \
  --gar krum --attack little --attack-args factor:1.5 negative:True --momentum-at worker \
  --learning-rate 0.5 --batch-size 83 --gradient-clip 2 --l2-regularize 1e-4 --seed 1 \
  --nb-steps "$BIG_STEPS" --evaluation-delta 50 --no-progress --result-directory "$OUT/big-krum"

data_note="real Fashion-MNIST"
dataset_override=()
if ! "$PY" -c 'from jaxbyz.data import load_dataset; load_dataset("fashion-mnist")' 2>/dev/null; then
  data_note="synthetic data of Fashion-MNIST's shape (dataset not found)"
  dataset_override=(--set dataset=synthetic)
fi
grid_started=$(date +%s)
section grid "${BUDGETS[1]}" "$PY" -m jaxbyz.experiments.sweep paper-fashion-mnist \
  "${GRID_ARGS[@]}" "${dataset_override[@]}" --max-batch 64 --no-progress --cache-dir none \
  --no-plots --output "$OUT/grid"
grid_s=$(( $(date +%s) - grid_started ))

section step "${BUDGETS[2]}" "$PY" benchmarks/step.py "${STEP_ARGS[@]}" --max-gb 100 \
  --out "$OUT/step"
section rules "${BUDGETS[3]}" "$PY" benchmarks/aggregators.py "${AGG_ARGS[@]}" --no-numpy \
  --max-gb 20 --out "$OUT/aggregators"

echo "== summary"
"$PY" - "$OUT" "$card" "$data_note" "$grid_s" "$(( $(date +%s) - started ))" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, card, data_note, grid_s, total_s = sys.argv[1:]
out = Path(out)
print(f"card: {card}")
print("sections (name, exit status, seconds):", "; ".join(out.joinpath("sections.txt").read_text().split("\n")))
try:
    summary = json.loads((out / "big-krum" / "summary.json").read_text())
    print(f"big krum run: {summary['steps']} steps, run {summary['run_seconds']:.1f} s + compile "
          f"{summary['compile_seconds']:.1f} s, best accuracy {summary['best_accuracy']:.3f}")
except (OSError, KeyError, ValueError) as err:
    print(f"big krum run: no summary ({err})")
try:
    import pandas as pd
    runs = pd.read_csv(out / "grid" / "runs.csv")
    done = int((runs.status == "completed").sum())
    print(f"grid ({data_note}): {len(runs)} runs recorded, {done} completed, in {grid_s} s "
          f"wall; {float(grid_s) / max(len(runs), 1):.2f} s per run")
    meta = json.loads((out / "grid" / "sweep.json").read_text())
    session = meta["sessions"][-1]
    print(f"grid compile: {session.get('compiled')} programs, {session.get('compile_s', 0):.0f} s "
          f"summed over {session.get('compile_workers')} threads; total to run {meta.get('runs_total')}")
except (OSError, KeyError, ValueError, ImportError) as err:
    print(f"grid: no table ({err})")
try:
    rows = json.loads((out / "step.json").read_text())["rows"]
except (OSError, ValueError) as err:
    rows = []
    print(f"step: no rows ({err})")
for row in rows:
    if "skipped" in row:
        print(f"step {row['rule']:8s} n={row['n']:6d}: skipped ({row['skipped'][:120]})")
        continue
    peak = row["device_peak_gb"]
    print(f"step {row['rule']:8s} n={row['n']:6d}: {row['step_ms']:9.1f} ms/step "
          f"{row['gradients_per_s']:12,.0f} gradients/s, compile {row['compile_s']:.1f} s, "
          f"planned {row['planned_gb'] or float('nan'):.2f} GB, device peak so far "
          f"{peak if peak is not None else float('nan'):.2f} GB, rule alone {row['rule_ms']:.1f} ms")
print(f"gpu_check total: {total_s} s")
EOF
