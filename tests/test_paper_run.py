"""The paper's Fashion-MNIST run on real data lands near the paper code's accuracy.

Fashion-MNIST, n = 51, f = 12, krum, "a little is enough" (factor 1.5, negative), momentum 0.9 at
the workers, lr 0.5, batch 83, clip 2, lambda 1e-4, 300 steps, evaluation every 5 steps. The
paper's own code reaches a best top-1 accuracy of about 0.82; ours must be within 0.03 of it.
"""

from __future__ import annotations

import pytest

from jaxbyz.config import PAPER_RUN
from jaxbyz.data import DatasetNotFoundError, load_dataset
from jaxbyz.train import run

PAPER_CODE_BEST = 0.82


@pytest.fixture(scope="module")
def fashion_mnist():
    try:
        return load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError as err:
        pytest.skip(f"Fashion-MNIST not available: {err}")


@pytest.mark.slow
def test_paper_run_accuracy_within_three_points(fashion_mnist):
    summary = run(PAPER_RUN, progress=False)
    assert summary["status"] == "completed"
    assert abs(summary["best_accuracy"] - PAPER_CODE_BEST) <= 0.03, summary


@pytest.mark.slow
def test_adam_at_the_server_learns_fashion_mnist(fashion_mnist):
    """Adam as the server optimiser (no attack, 51 workers averaged, 300 steps): best top-1
    0.8406 measured (SGD with momentum 0.9 at lr 0.5: 0.8519)."""
    config = PAPER_RUN.replace(
        nb_decl_byz=0,
        gar="average",
        attack="nan",
        attack_args={},
        momentum=0.0,
        momentum_at="update",
        server_optimizer="adam",
        learning_rate=1e-3,
    )
    summary = run(config, progress=False)
    assert summary["status"] == "completed" and summary["best_accuracy"] >= 0.80, summary
