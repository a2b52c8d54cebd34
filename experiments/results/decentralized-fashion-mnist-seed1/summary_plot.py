"""One figure of the decentralized sweep: accuracy of the honest nodes' average model over
steps, rows topologies, columns mixings; colours attacks, solid worker / dashed update momentum.

    python experiments/results/decentralized-fashion-mnist-seed1/summary_plot.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_csv(HERE / "runs.csv")
curves = pd.read_csv(HERE / "curves.csv.gz")
runs["setting"] = runs["attack"].where(runs["nb_real_byz"] > 0, "none")
topologies, mixings = ["ring", "torus:4x4", "two-cliques"], ["gossip", "clipped-gossip", "rule"]
colours = {"none": "0.4", "little": "C0", "dissensus": "C3"}
fig, axes = plt.subplots(3, 3, figsize=(9, 7), sharex=True, sharey=True)
for i, topology in enumerate(topologies):
    for j, mixing in enumerate(mixings):
        ax = axes[i, j]
        cell = runs[(runs["topology"] == topology) & (runs["mixing"] == mixing)]
        for run in cell.itertuples():
            curve = curves[curves["run_id"] == run.run_id].sort_values("step")
            style = "-" if run.momentum_at == "worker" else "--"
            label = f"{run.setting}, {run.momentum_at}"
            ax.plot(curve["step"], curve["accuracy"], style, color=colours[run.setting], lw=1.2,
                    label=label)  # fmt: skip
        name = "median per neighbourhood" if mixing == "rule" else mixing
        ax.set_title(f"{topology} / {name}", fontsize=9)
        ax.set_ylim(0, 0.9)
        ax.grid(alpha=0.3)
axes[0, 0].legend(fontsize=7, loc="lower right")
fig.supxlabel("step")
fig.supylabel("top-1 accuracy of the honest nodes' average model")
fig.suptitle("16 nodes, 2 Byzantine; Fashion-MNIST MLP, seed 1", fontsize=10)
fig.tight_layout()
fig.savefig(HERE / "plots" / "summary-accuracy.png", dpi=80)
