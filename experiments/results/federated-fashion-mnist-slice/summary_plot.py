"""One figure of the federated slice: accuracy over rounds, rows rule x attack, columns K local
steps; colours the momentum placement, solid all 51 clients per round, dashed 17.

    python experiments/results/federated-fashion-mnist-slice/summary_plot.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

HERE = Path(__file__).parent
runs = pd.read_csv(HERE / "runs.csv")
curves = pd.read_csv(HERE / "curves.csv.gz")
runs["M"] = runs["clients_per_round"].fillna(51).astype(int)
cells = [(g, a) for g in ("krum", "median") for a in ("little", "empire")]
steps = (1, 5, 20)
fig, axes = plt.subplots(len(cells), len(steps), figsize=(9, 9), sharex=True, sharey=True)
for i, (rule, attack) in enumerate(cells):
    for j, k in enumerate(steps):
        ax = axes[i, j]
        chosen = runs[runs["nb_local_steps"] == k]
        attacked = chosen[(chosen["gar"] == rule) & (chosen["attack"] == attack)]
        baseline = chosen[(chosen["role"] == "baseline") & (chosen["M"] == 51)]
        for run in [*attacked.itertuples(), *baseline.itertuples()]:
            curve = curves[curves["run_id"] == run.run_id].sort_values("step")
            if run.role == "baseline":
                colour, label = "0.5", "no attack (39 clients)"
            else:
                colour = "C1" if run.momentum_at == "worker" else "C0"
                label = f"{run.momentum_at}, M = {run.M}"
            style = "--" if run.M == 17 else "-"
            ax.plot(curve["step"], curve["accuracy"], style, color=colour, lw=1.2, label=label)
        ax.set_title(f"{rule} / {attack}, K = {k}", fontsize=9)
        ax.set_ylim(0.3, 0.9)
        ax.grid(alpha=0.3)
axes[0, 0].legend(fontsize=7, loc="lower right")
fig.supxlabel("round")
fig.supylabel("top-1 accuracy")
fig.suptitle("n = 51 clients, 12 Byzantine; Fashion-MNIST MLP, 100 rounds, seed 1", fontsize=10)
fig.tight_layout()
fig.savefig(HERE / "plots" / "summary-accuracy.png", dpi=80)
