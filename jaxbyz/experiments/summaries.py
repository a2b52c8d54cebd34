"""What a sweep records of each run: its identifying columns, and its result columns computed
from its accuracy curve and per-step loss and variance-norm ratio.

The statistics follow the paper's code (El-Mhamdi et al., ICLR 2021; its ``study.py``): the best
top-1 cross-accuracy, and the share of steps whose honest variance-norm ratio is under the rule's
bound (``paper_share_under_bound`` also requires the loss not to exceed its initial value, as
``reproduce.py`` counts "ratio validated" steps). A run whose loss becomes non-finite is
"diverged"; one that raised is "error", with its reason.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from jaxbyz.experiments.grid import Run
from jaxbyz.metrics import divergence

RESULT_COLUMNS = (
    "status",
    "reason",
    "best_accuracy",
    "best_step",
    "final_accuracy",
    "final_loss",
    "diverged_step",
    "mean_ratio",
    "mean_sampled_ratio",
    "bound",
    "share_under_bound",
    "paper_share_under_bound",
    "wall_s",
    "runs_in_batch",
    "device",
)


def config_row(run: Run, program_id: str) -> dict[str, Any]:
    """The identifying columns of a run: ids (``program_id``: the id of the compiled program it
    ran in, :attr:`jaxbyz.experiments.grid.Program.id`), role and every configuration field."""
    row: dict[str, Any] = {
        "run_id": run.id,
        "name": run.name,
        "role": run.role,
        "pair_id": run.pair_id if run.role == "attacked" else "",
        "baseline_id": run.baseline_id if run.role == "attacked" else "",
        "program_id": program_id,
    }
    for key, value in run.config.to_dict().items():
        row[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    return row


def segment_means(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per evaluation step, the mean of the per-step ``values`` since the previous evaluation
    (NaN at step 0); non-finite values are ignored."""
    out = np.full(len(steps), np.nan, np.float32)
    for j in range(1, len(steps)):
        part = values[steps[j - 1] : steps[j]]
        part = part[np.isfinite(part)]
        if part.size:
            out[j] = part.mean()
    return out


def summarize(
    accuracy: np.ndarray,
    loss: np.ndarray,
    ratio: np.ndarray,
    sampled_ratio: np.ndarray,
    theta_finite: bool,
    steps: np.ndarray,
    bound: float | None,
) -> dict[str, Any]:
    """The result columns of one run from its accuracy curve and per-step loss and ratio.
    A diverged run (:func:`jaxbyz.metrics.divergence`) counts no evaluation taken at or after
    the step where it diverged."""
    first_bad = divergence(loss, theta_finite)
    diverged = first_bad is not None
    if first_bad is None:
        first_bad = len(loss) + 1
    valid = (steps < first_bad) & np.isfinite(accuracy)
    if valid.any():
        best = int(np.argmax(np.where(valid, accuracy, -np.inf)))  # first maximum: earliest step
        best_accuracy, best_step = float(accuracy[best]), int(steps[best])
    else:
        best_accuracy, best_step = float("nan"), -1
    if bound is None:
        share = paper_share = float("nan")
    else:
        share = float(np.mean(ratio < bound))
        paper_share = float(np.mean((ratio < bound) & (loss <= loss[0])))
    return {
        "status": "diverged" if diverged else "completed",
        "reason": _divergence_reason(first_bad, len(loss)) if diverged else "",
        "best_accuracy": best_accuracy,
        "best_step": best_step,
        "final_accuracy": float(accuracy[-1]),
        "final_loss": float(loss[-1]),
        "diverged_step": first_bad if diverged else -1,
        "mean_ratio": _finite_mean(ratio),
        "mean_sampled_ratio": _finite_mean(sampled_ratio),
        "bound": float("nan") if bound is None else float(bound),
        "share_under_bound": share,
        "paper_share_under_bound": paper_share,
    }


def _divergence_reason(step: int, steps: int) -> str:
    if step >= steps:
        return f"non-finite parameters after the last step ({steps})"
    return f"non-finite loss from step {step}"


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def error_result(reason: str) -> dict[str, Any]:
    """The result columns of a run that raised."""
    nan = float("nan")
    return {
        "status": "error",
        "reason": reason,
        "best_accuracy": nan,
        "best_step": -1,
        "final_accuracy": nan,
        "final_loss": nan,
        "diverged_step": -1,
        "mean_ratio": nan,
        "mean_sampled_ratio": nan,
        "bound": nan,
        "share_under_bound": nan,
        "paper_share_under_bound": nan,
    }
