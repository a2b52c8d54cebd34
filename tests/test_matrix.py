"""The report's rule x attack matrices against hand-computed means."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from jaxbyz.experiments import matrix
from jaxbyz.experiments.report import plotting_available, write_report


def _row(gar, attack, acc, seed=1, at="worker", f=2, status="completed", attack_args="{}"):
    return dict(
        run_id=f"{gar}-{attack}-{attack_args}-{seed}-{at}-{f}-{status}", role="attacked",
        status=status, gar=gar, gar_args="{}", attack=attack, attack_args=attack_args,
        momentum_at=at, nb_decl_byz=f, best_accuracy=acc, seed=seed,
    )  # fmt: skip


TABLE = pd.DataFrame(
    [
        _row("median", "little", 0.6, seed=1),
        _row("median", "little", 0.8, seed=2),
        _row("median", "empire", 0.5),
        _row("krum", "little", 0.3),
        _row("krum", "empire", 0.9),
        _row("krum", "empire", 0.0, status="error"),  # failed: left out of the means
        _row("krum", "nan", 0.1, status="diverged"),  # counts, with its accuracy before
        _row("krum", "little", 0.7, at="update"),
        _row("median", "empire", 0.2, at="update"),
    ]
)


def test_cells_worst_attack_and_panels():
    panels = dict((tuple(p.values()), cells) for p, cells in matrix.matrices(TABLE))
    assert set(panels) == {("worker", 2), ("update", 2)}
    cells = panels[("worker", 2)]
    assert cells.loc["median", "little"] == pytest.approx(0.7)
    assert cells.loc["krum", "empire"] == pytest.approx(0.9)
    assert cells.loc["median", "worst attack"] == "empire" and cells.loc["median", "worst"] == 0.5
    assert cells.loc["krum", "worst attack"] == "nan" and cells.loc["krum", "worst"] == 0.1
    assert list(cells.index) == ["krum", "median"]  # sorted by worst case
    update = panels[("update", 2)]
    assert pd.isna(update.loc["krum", "empire"]) and update.loc["krum", "worst"] == 0.7
    assert "| krum | 0.900 | 0.300 | 0.100 | nan | 0.100 |" in matrix.markdown(cells)


def test_worst_case_by_placement_over_the_attacks_both_hold():
    cases = matrix.placement_worst_cases(TABLE).set_index("rule")
    # krum: only "little" ran with both placements (update 0.7, worker 0.3)
    assert cases.loc["krum", "update"] == 0.7 and cases.loc["krum", "worker"] == 0.3
    assert cases.loc["krum", "worker - update"] == pytest.approx(-0.4)
    # median: only "empire" ran with both (update 0.2, worker 0.5)
    assert cases.loc["median", "its worst attack"] == "empire"
    assert cases.loc["median", "worker - update"] == pytest.approx(0.3)
    lines = "\n".join(matrix.section(TABLE, None))
    assert "worker momentum raises the worst case in 1 of 2 (rule, f) cells" in lines
    assert "| 2 | median | 0.200 | empire | 0.500 | empire | +0.300 |" in lines
    one_placement = TABLE[TABLE["momentum_at"] == "worker"]
    assert matrix.placement_worst_cases(one_placement).empty
    assert "Worst case by momentum placement" not in "\n".join(matrix.section(one_placement, None))


def test_attack_with_several_argument_sets_is_shown_per_set():
    table = pd.concat(
        [TABLE, pd.DataFrame([_row("median", "little", 0.1, attack_args='{"factor": 3}')])]
    )
    cells = dict((tuple(p.values()), c) for p, c in matrix.matrices(table))[("worker", 2)]
    assert 'little {"factor": 3}' in cells.columns and "little" in cells.columns
    assert cells.loc["median", "worst attack"] == 'little {"factor": 3}'


def test_report_has_the_section_only_for_grids_crossing_rules_and_attacks(tmp_path):
    committed = Path(__file__).parents[1] / "experiments/results/paper-fashion-mnist-seed1"
    table = pd.read_csv(committed / "runs.csv", dtype={"reason": str}).fillna({"reason": ""})
    text = write_report(tmp_path, table, None, {}, plots=False).read_text()
    assert "## Rules against attacks" in text and "### Momentum at the workers, f = 24" in text
    assert not matrix.applies(TABLE[TABLE["gar"] == "median"])


@pytest.mark.skipif(not plotting_available(), reason="matplotlib is not installed")
def test_heatmap_is_drawn(tmp_path):
    panel, cells = matrix.matrices(TABLE)[0]
    path = matrix.heatmap(panel, cells, tmp_path / "h.png")
    assert path.stat().st_size > 1000


@pytest.mark.skipif(not plotting_available(), reason="matplotlib is not installed")
def test_heatmap_makes_room_for_long_labels(tmp_path):
    """One rule against attacks named with long arguments: the rotated labels used to take all
    the height, the axes collapsed (a matplotlib warning) and the labels were cut."""
    import warnings

    from PIL import Image

    args = '{"learning_rate": 1.0, "objective": "directed", "radius": 10.0}'
    table = pd.DataFrame(
        [
            _row("geomed", "optimized", 0.8 + i / 100, attack_args=args.replace("1.0", str(i)))
            for i in range(3)
        ]
    )
    panel, cells = matrix.matrices(table)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the collapse is a UserWarning
        path = matrix.heatmap(panel, cells, tmp_path / "h.png")
    height = Image.open(path).size[1]
    assert height > 300  # 1.2 + 0.4 inches would be 176 pixels at 110 dpi


@pytest.mark.skipif(not plotting_available(), reason="matplotlib is not installed")
def test_the_attack_named_nan_stays_a_name_in_the_report(tmp_path):
    from jaxbyz.experiments import sweep as sweep_cli
    from jaxbyz.experiments.storage import Store

    committed = Path(__file__).parents[1] / "experiments/results/paper-fashion-mnist-seed1"
    table = pd.read_csv(committed / "runs.csv", dtype={"reason": str})
    attacked = table.index[table["role"] == "attacked"][:3]
    table.loc[attacked, "attack"] = "nan"  # read back by default, "nan" would be a float NaN
    table.to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "curves.csv.gz").write_bytes((committed / "curves.csv.gz").read_bytes())
    text = Path(sweep_cli.report(Store(tmp_path), {}, plots=False)).read_text()
    section = text.split("## Rules against attacks")[1].splitlines()
    headers = [line for line in section if line.startswith("| rule |")]
    assert any("| nan " in line for line in headers), headers  # "nan" or "nan {its args}"
