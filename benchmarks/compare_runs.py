"""Two sweeps' ``runs.csv`` against each other, run by run (same ``run_id``): the same grid on two
machines or backends should give the same accuracies up to floating-point reassociation.

Prints the runs in common, the mean best top-1 accuracy of each, the mean and largest absolute
difference, their correlation, and the runs that differ by more than ``--threshold``.

    python benchmarks/compare_runs.py experiments/results/paper-fashion-mnist-seed1/runs.csv \
        benchmarks/gpu-results/h200-20261127/grid-seed1-runs.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first", help="a sweep's runs.csv")
    parser.add_argument("second", help="another sweep's runs.csv")
    parser.add_argument("--column", default="best_accuracy", help="the figure compared")
    parser.add_argument("--threshold", type=float, default=0.05, help="list larger differences")
    args = parser.parse_args(argv)
    a, b = (pd.read_csv(path).set_index("run_id") for path in (args.first, args.second))
    common = a.index.intersection(b.index)
    if common.empty:
        parser.error(f"{args.first} and {args.second} have no run_id in common")
    x, y = a.loc[common, args.column], b.loc[common, args.column]
    gap = (y - x).abs()
    print(f"runs in common: {len(common)} (first {len(a)}, second {len(b)})")
    print(f"mean {args.column}: {x.mean():.4f} vs {y.mean():.4f}")
    print(f"absolute difference: mean {gap.mean():.4f}, largest {gap.max():.4f}")
    print(f"correlation: {np.corrcoef(x, y)[0, 1]:.4f}")
    larger = gap[gap > args.threshold]
    print(f"runs differing by more than {args.threshold}: {len(larger)}")
    for run_id in larger.index:
        print(f"  {a.loc[run_id, 'name']}: {x[run_id]:.4f} vs {y[run_id]:.4f}")


if __name__ == "__main__":
    main()
