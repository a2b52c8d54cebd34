"""Hostile inputs to the Python API (rules, attacks, transforms, configurations) and to
``python -m jaxbyz.train``: each is refused in one line naming what is wrong and how to fix it,
before anything is computed, and nothing already written is lost. (Data files:
test_hostile_data.py; grids: test_hostile_grid.py; sweep folders: test_hostile_sweep.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import quick_run
from hostile import one_error_line, refusal

from jaxbyz import aggregators, attacks, train, transforms
from jaxbyz.config import Config
from jaxbyz.experiments.summaries import summarize
from jaxbyz.metrics import divergence
from jaxbyz.validation import check_config

G = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- #
# Rules


@pytest.mark.parametrize(
    ("rule", "matrix", "f", "expected"),
    [
        ("krum", G, 1.7, "rule krum: parameter f=1.7 is invalid; pass an integer >= 0"),
        ("krum", G, -1, "rule krum: parameter f=-1 is invalid"),
        ("median", G, True, "rule median: parameter f=True is invalid"),
        ("median", G, "2", "rule median: parameter f='2' is invalid"),
        ("median", G, None, "rule median: parameter f=None is invalid"),
        ("median", G[0], 1, "G must be a [k, d] matrix with k >= 1 rows and d >= 1 columns, got"),
        ("median", G[None], 1, "got shape (1, 9, 4)"),
        ("average", G[:0], 0, "got shape (0, 4)"),
        ("average", G[:, :0], 0, "got shape (9, 0)"),
        ("trmean", G.astype(np.complex64), 1, "G must hold real numbers"),
        ("trmean", np.array([["a", "b"]]), 0, "G must hold real numbers"),
        ("krum", object(), 1, "G must be a [k, d] array of numbers, got object"),
        ("krum", G, 4, "krum needs n >= 2f+3, got n=9, f=4"),
        ("bulyan", G, 2, "bulyan needs n >= 4f+3, got n=9, f=2"),
        ("trmean", G, 5, "trmean needs n >= 2f+1, got n=9, f=5"),
        ("phocas", G, 5, "phocas needs n >= 2f+1"),
        ("meamed", G, 5, "meamed needs n >= 2f+1"),
        ("geomed", G, 5, "geomed needs n >= 2f+1"),
        ("brute", G, 5, "brute needs n >= 2f+1"),
        ("aksel", G, 5, "aksel needs n >= 2f+1"),
        ("cge", G, 9, "cge needs n >= f+1"),
        ("monna", G, 5, "monna needs n >= 2f+1"),
    ],
)
def test_rules_refuse_what_they_cannot_compute(rule, matrix, f, expected):
    with pytest.raises(ValueError) as err:
        aggregators.get(rule)(matrix, f)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_matrices_are_promoted_to_float(dtype):
    integers = (np.arange(20).reshape(5, 4) % 3).astype(dtype)
    got = aggregators.get("median")(integers, 1)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, aggregators.get("median")(integers.astype(np.float32), 1))


def test_rule_checks_are_static_under_jit():
    import jax

    with pytest.raises(ValueError, match="krum needs n >= 2f\\+3"):
        jax.jit(lambda g: aggregators.get("krum")(g, 4))(G)
    with pytest.raises(ValueError, match="after bucketing: n=5, f=2"):
        aggregators.get("krum", pre=[("bucketing", {"s": 2})])(G, 2, key=jax.random.key(0))


# ---------------------------------------------------------------------------------------------- #
# Attacks and transforms


@pytest.mark.parametrize(
    ("name", "honest", "f", "extra", "expected"),
    [
        ("little", G[:0], 2, {}, "H (the honest rows) must be a [k, d] matrix with k >= 1 rows"),
        ("empire", G[0], 2, {}, "got shape (4,)"),
        ("signflip", G, 1.5, {}, "attack signflip: parameter f=1.5 is invalid"),
        ("signflip", G, -2, {}, "parameter f=-2 is invalid"),
        ("nan", G, 3, {"f_decl": 2}, "f_decl=2 (the count the rule tolerates) is below f=3"),
        ("nan", G, 2, {"f_decl": 2.5}, "parameter f_decl=2.5 is invalid"),
        ("gaussian", G.astype(np.complex64), 2, {"key": None}, "H (the honest rows) must hold"),
        ("little", G, 2, {"bogus": 1.0}, "attack little: parameter bogus=1.0 is invalid"),
    ],
)
def test_attacks_refuse_what_they_cannot_compute(name, honest, f, extra, expected):
    atk = attacks.get(name)
    kwargs = {"rule": aggregators.get("median"), **extra}
    with pytest.raises(ValueError) as err:
        atk(honest, f, **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: transforms.robust_aggregate("krum", 1.5), "robust_aggregate: f=1.5"),
        (lambda: transforms.robust_aggregate("krum", 4, num_workers=9), "krum needs n >= 2f+3"),
        (lambda: transforms.robust_aggregate("nope", 1), "unknown aggregation rule 'nope'"),
        (lambda: transforms.server_optimizer("adam", 0.1, b3=1), "takes no parameter b3"),
        (lambda: transforms.clip_by_norm(1.0, "sideways"), "mode='sideways' is unknown"),
    ],
)
def test_transform_factories_refuse(call, expected):
    with pytest.raises(ValueError) as err:
        call()
    assert expected in str(err.value)


def test_robust_aggregate_refuses_rows_without_a_worker_axis():
    tx = transforms.robust_aggregate("median", 1)
    with pytest.raises(ValueError, match="same leading worker axis"):
        tx.update({"a": jnp.ones((5, 2)), "b": jnp.ones(3)}, tx.init({"a": 0, "b": 0}))


# ---------------------------------------------------------------------------------------------- #
# Configurations (the Python API and every command build a Config)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"learning_rate": math.nan}, "--learning-rate (field learning_rate) must be a finite"),
        ({"learning_rate": math.inf}, "must be a finite number, got inf"),
        ({"momentum": -math.inf}, "--momentum (field momentum) must be a finite number"),
        ({"momentum": "0.9"}, "got '0.9' (str)"),
        ({"nb_steps": 3.5}, "--nb-steps (field nb_steps) must be an integer, got 3.5"),
        ({"nb_workers": True}, "--nb-workers (field nb_workers) must be an integer, got True"),
        ({"gar_args": [1, 2]}, "--gar-args (field gar_args) must be a table"),
        ({"attack_args": {1: 2}}, "--attack-args (field attack_args) must be a table"),
        ({"gradient_clip": -1.0}, "--gradient-clip must be a finite number > 0, got -1.0"),
        ({"momentum": 1.0}, "--momentum must be in [0, 1), got 1.0"),
        ({"dampening": 1.5}, "--dampening must be in [0, 1], got 1.5"),
        ({"nb_workers": 0}, "--nb-workers must be a positive integer, got 0"),
        ({"nb_decl_byz": 51}, "--nb-decl-byz must be in [0, nb-workers)"),
        (
            {"attack": "fang-krum", "gar": "median", "nb_workers": 9, "nb_decl_byz": 4},
            "attack fang-krum: needs nb-workers >= 2 nb-decl-byz + 3, got nb-workers=9",
        ),
        ({"nb_real_byz": 13}, "--nb-real-byz must be between 0 and --nb-decl-byz (12)"),
        ({"nb_steps": 10**10}, "--nb-steps 10,000,000,000 is beyond what a run can hold"),
        ({"nb_workers": 10**9}, "--nb-workers 1,000,000,000 is beyond"),
        ({"batch_size": 10**12}, "--batch-size 1,000,000,000,000 is beyond"),
        ({"evaluation_delta": -1}, "--evaluation-delta must be an integer >= 0"),
        ({"l2_regularize": -1e-4}, "--l2-regularize must be a finite number >= 0"),
        ({"weight_decay": math.nan}, "--weight-decay (field weight_decay) must be a finite"),
        ({"dirichlet_alpha": 0.0}, "--dirichlet-alpha must be a finite number > 0"),
        ({"learning_rate_schedule": "0.1,10"}, "a step is missing its learning rate"),
        ({"dataset": "imagenet"}, "--dataset 'imagenet' is unknown"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"loss": "mse"}, "--loss mse"),
        ({"gar": "krum", "gar_args": {"foo": 1}}, "krum: parameter foo=1 is invalid"),
        ({"attack": "little", "attack_args": {"factor": "big"}}, "factor mode 'big'"),
        ({"server_optimizer": "nope"}, "'nope' is not an optax optimiser"),
        ({"clip_mode": "soft"}, "--clip-mode 'soft' is unknown"),
        ({"momentum_at": "nowhere"}, "--momentum-at 'nowhere' is unknown"),
        ({"nb_local_steps": 0}, "--nb-local-steps must be a positive integer, got 0"),
        ({"batch_size_test": 0}, "--batch-size-test must be a positive integer, got 0"),
    ],
)
def test_configurations_refused_in_one_line(changes, expected):
    with pytest.raises(ValueError) as err:
        check_config(Config(**changes))
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


# ---------------------------------------------------------------------------------------------- #
# The train command

QUICK = [*quick_run.QUICK, "--seed", "1"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--nb-workers", "1000000000"], "--nb-workers 1,000,000,000 is beyond"),
        (["--batch-size", "1000000000000"], "--batch-size 1,000,000,000,000 is beyond"),
        (["--nb-steps", "10000000000"], "--nb-steps 10,000,000,000 is beyond"),
        (["--nb-workers", "400000", "--nb-decl-byz", "0"], "not enough memory: one run needs"),
        (["--batch-size", "5000000"], "not enough memory"),
        (["--learning-rate", "nan"], "--learning-rate (field learning_rate) must be a finite"),
        (["--momentum", "inf"], "--momentum (field momentum) must be a finite number, got inf"),
        (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'; see --help"),
        (["--bogus"], "unrecognized arguments: --bogus; see --help"),
        (["--checkpoint-delta", "-5"], "--checkpoint-delta must be an integer >= 0, got -5"),
        (["--load-checkpoint", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
        (["--gars", "krum,2;"], "--gars"),
        (["--gar-args", "m"], "--gar-args 'm' is malformed"),
        (["--model-args", "cifar100:True"], "simples-full"),
        (["--init-multi", "nope"], "--init-multi"),
        (["--criterion", "top-k", "--criterion-args", "k:100"], "--criterion"),
    ],
)
def test_train_refuses_in_one_line(tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    line = refusal(train.main, [*QUICK, *flags, "--result-directory", str(out)], capsys)
    assert expected in line, line
    assert not out.exists()  # refused before anything was written


def test_result_directory_under_a_file_is_refused_before_computing(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("mine\n")
    line = refusal(train.main, [*QUICK, "--result-directory", str(afile / "run")], capsys)
    assert "cannot be created" in line and "is a file" in line
    assert afile.read_text() == "mine\n"
    line = refusal(train.main, [*QUICK, "--result-directory", str(afile)], capsys)
    assert "is a file" in line


def test_foreign_and_completed_directories_are_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    assert "holds no jaxbyz run" in refusal(
        train.main, [*QUICK, "--result-directory", str(out)], capsys
    )
    assert (out / "notes.txt").read_text() == "precious\n" and len(list(out.iterdir())) == 1


# ---------------------------------------------------------------------------------------------- #
# Divergence: one definition for the train command and the sweep


def test_divergence_definition():
    assert divergence(np.array([1.0, 2.0, np.nan, 1.0])) == 2
    assert divergence(np.array([1.0, np.inf])) == 1
    assert divergence(np.array([1.0, 1.0]), parameters_finite=False) == 2
    assert divergence(np.array([1.0, 1.0])) is None


def test_sweep_never_counts_an_evaluation_at_or_after_divergence():
    steps = np.array([0, 2, 4])
    loss = np.array([2.3, np.nan, np.nan, np.nan])
    row = summarize(np.array([0.10, 0.108, 0.108]), loss, loss, loss, False, steps, None)
    assert row["status"] == "diverged" and row["diverged_step"] == 1
    assert row["best_step"] == 0 and row["best_accuracy"] == pytest.approx(0.10)
    finite = np.array([2.3, 2.2, 2.1, 2.0])
    row = summarize(np.array([0.1, 0.5, 0.2]), finite, finite, finite, False, steps, None)
    assert row["diverged_step"] == 4 and row["best_step"] == 2  # θ at step 4 is not finite
    assert "non-finite parameters" in row["reason"]


def test_train_reports_divergence_and_no_evaluation_after_it(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*QUICK, "--gar", "average", "--nb-real-byz", "2", "--attack", "nan"]
    assert train.main([*flags, "--evaluation-delta", "2", "--result-directory", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 1
    assert summary["best_step"] == 0  # the evaluation at step 2 is after the divergence
    assert "diverged at step 1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- #
# Installs: optional packages


HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ImportError("hidden by the test: " + name)
sys.meta_path.insert(0, Hide())
"""


def _without(package: str, code: str) -> subprocess.CompletedProcess:
    script = HIDE.format(name=package) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_report_without_matplotlib_says_which_extra(tmp_path):
    committed = Path(__file__).parents[1] / "experiments/results/paper-fashion-mnist-seed1"
    code = f"""
    import pandas as pd
    from jaxbyz.experiments.report import write_report
    table = pd.read_csv("{committed}/runs.csv", dtype={{"reason": str}}).fillna({{"reason": ""}})
    curves = pd.read_csv("{committed}/curves.csv.gz")
    print(write_report({str(tmp_path)!r}, table, curves, {{}}, plots=True))
    """
    result = _without("matplotlib", code)
    assert result.returncode == 0, result.stderr
    assert "plots skipped: matplotlib is not installed (pip install 'jaxbyz[plot]')" in (
        result.stderr
    )
    assert (tmp_path / "report.md").exists()


def test_tfds_dataset_without_tensorflow_datasets_says_what_to_install():
    code = """
    from jaxbyz import train
    train.main(["--dataset", "cifar10", "--nb-steps", "2", "--no-progress"])
    """
    result = _without("tensorflow_datasets", code)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "--dataset cifar10 needs tensorflow-datasets" in line and "jaxbyz[tfds]" in line
