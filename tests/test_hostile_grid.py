"""Hostile grids, ``--set`` and ``--seeds``: one clear line before anything runs, never a silent
wrong number.

Each case writes a grid (or a ``--set``/``--seeds``) and checks, through
``python -m jaxbyz.experiments.sweep --grid FILE --dry-run`` in-process, that it is refused with
exit status 2 in one line (no traceback) naming the file (or the option), the field and the
value, that nothing was written, and that the Python API (``grid.load_grid``) raises a ValueError
of the same line. Then: a bad value anywhere in the product is found (the checks probe every
distinct value, not only the first configuration), include cycles, and the presets still load and
dry-run quickly.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from hostile import refusal

from jaxbyz.experiments import grid as grid_lib
from jaxbyz.experiments import sweep

PROG = "python -m jaxbyz.experiments.sweep"
BASE = {
    "name": '"hostile-grid"',
    "dataset": '"synthetic"',
    "nb_workers": "7",
    "nb_decl_byz": "2",
    "batch_size": "8",
    "nb_steps": "6",
    "evaluation_delta": "3",
    "gar": '"median"',
    "attack": '"little"',
    "attack_args": "{ factor = 1.5, negative = true }",
}
ATTACK_AXIS = """
[[axis.atk]]
attack = "empire"
attack_args = { factor = 1.1 }
[[axis.atk]]
attack = "little"
attack_args = { nosuch = 1 }
"""
MANY_SEEDS = "[" + ", ".join(str(i) for i in range(10_001)) + "]"
NO_ATTACK = {"attack": None, "attack_args": None}


def grid_text(changes: dict[str, str | None] | None = None, tail: str = "") -> str:
    """The base grid with ``changes`` (key -> TOML value; None drops the key) and ``tail``."""
    fields = {**BASE, **(changes or {})}
    lines = [f"{key} = {value}" for key, value in fields.items() if value is not None]
    return "\n".join(lines) + "\n" + textwrap.dedent(tail)


# (id, grid changes, raw tail, expected fragments of the line besides the file name)
FILE_CASES = [
    # names of rules, attacks, models, datasets, losses, optimisers, placements
    (
        "gar-unknown",
        {"gar": '"nosuchrule"'},
        "",
        ['gar = "nosuchrule"', "unknown aggregation rule"],
    ),
    ("attack-unknown", {"attack": '"noattack"'}, "", ['attack = "noattack"', "unknown attack"]),
    ("model-unknown", {"model": '"nomodel"'}, "", ['model = "nomodel"', "unknown model"]),
    ("dataset-unknown", {"dataset": '"nodata"'}, "", ['dataset = "nodata"', "choose one of"]),
    ("loss-unknown", {"loss": '"noloss"'}, "", ['loss = "noloss"', "unknown loss"]),
    ("optimizer-unknown", {"server_optimizer": '"nosgd"'}, "", ['server_optimizer = "nosgd"']),
    ("placement-unknown", {"momentum_at": '"nowhere"'}, "", ['momentum_at = "nowhere"']),
    ("gars-malformed", {"gars": '"median,x"'}, "", ['gars = "median,x"', "frequency"]),
    # rule, attack, model arguments
    ("gar-args-unknown", {"gar_args": "{foo = 1}"}, "", ["gar_args = { foo = 1 }", "'foo'"]),
    ("gar-args-range", {"gar": '"krum"', "gar_args": "{m = 0}"}, "", ["gar_args = { m = 0 }"]),
    ("model-args", {"model_args": "{x = 1}"}, "", ["model_args = { x = 1 }", "argument x"]),
    ("init-args-alone", {"init_multi_args": "{gain = 1.0}"}, "", ["init_multi_args", "init_multi"]),
    (
        "attack-args-in-axis",
        NO_ATTACK,
        ATTACK_AXIS,
        ["attack_args = { nosuch = 1 } (in [[axis.atk]] #2)", "no parameter 'nosuch'"],
    ),
    # types
    ("str-for-float", {"learning_rate": '"fast"'}, "", ['learning_rate = "fast"', "finite number"]),
    ("str-for-momentum", {"momentum": '"0.9"'}, "", ['momentum = "0.9"', "finite number"]),
    ("float-for-int", {"nb_steps": "3.5"}, "", ["nb_steps = 3.5", "an integer"]),
    ("bool-for-int", {"batch_size": "true"}, "", ["batch_size = true", "an integer"]),
    ("mixed-list", {"learning_rate": '[0.1, "x"]'}, "", ['learning_rate = "x"', "finite number"]),
    ("dict-for-str", {"attack": "{a = 1}"}, "", ["attack = { a = 1 }", "a string"]),
    ("nested-list", {"dataset": '[["mnist"]]'}, "", ['dataset = ["mnist"]', "a string"]),
    ("date-for-int", {"nb_steps": "1979-05-27"}, "", ["nb_steps = 1979-05-27", "an integer"]),
    ("str-for-table", {"gar_args": '"m=1"'}, "", ['gar_args = "m=1"', "table"]),
    # NaN, infinities, ranges
    ("nan", {"learning_rate": "nan"}, "", ["learning_rate = nan", "finite number"]),
    ("inf", {"momentum": "inf"}, "", ["momentum = inf", "finite number"]),
    ("minus-inf", {"l2_regularize": "-inf"}, "", ["l2_regularize = -inf", "finite number"]),
    ("nan-in-args", {"attack_args": "{ factor = nan }"}, "", ["attack_args", "factor = nan"]),
    ("huge-float", {"learning_rate": "1" + "0" * 400}, "", ["learning_rate = 1000", "too large"]),
    ("negative-count", {"batch_size": "-3"}, "", ["batch_size = -3", "positive integer"]),
    ("zero-workers", {"nb_workers": "0", "nb_decl_byz": "0"}, "", ["nb_workers = 0", "positive"]),
    ("f-equals-n", {"nb_decl_byz": "7"}, "", ["nb_decl_byz = 7", "nb_workers 7"]),
    ("f-negative", {"nb_decl_byz": "-1"}, "", ["nb_decl_byz = -1"]),
    ("real-above-declared", {"nb_real_byz": "3"}, "", ["nb_real_byz = 3", "nb_decl_byz (2)"]),
    ("momentum-one", {"momentum": "1.0"}, "", ["momentum = 1.0", "[0, 1)"]),
    ("lr-zero", {"learning_rate": "0"}, "", ["learning_rate = 0.0", "> 0"]),
    ("steps-minus-one", {"nb_steps": "-1"}, "", ["nb_steps = -1", "cannot be honoured"]),
    (
        "int-beyond-32-bits",
        {"evaluation_delta": "4294967296"},
        "",
        ["evaluation_delta = 4294967296"],
    ),
    ("clip-zero", {"gradient_clip": "0.0"}, "", ["gradient_clip = 0.0", "> 0"]),
    # seeds
    ("seed-negative", {"seed": "[1, -1]"}, "", ["seed = -1", "0 to 2147483647"]),
    ("seed-too-big", {"seed": "2147483648"}, "", ["seed = 2147483648"]),
    ("seed-bool", {"seed": "true"}, "", ["seed = true", "an integer"]),
    ("seed-float", {"seed": "1.5"}, "", ["seed = 1.5", "an integer"]),
    ("seeds-not-list", {"seeds": '"1-5"'}, "", ['seeds = "1-5"', "list of integers"]),
    ("seeds-and-seed", {"seed": "1", "seeds": "[2]"}, "", ["seeds = [2]", "seed is set too"]),
    ("too-many-seeds", {"seeds": MANY_SEEDS}, "", ["seeds = [0, 1, 2", "10001 seeds", "10000"]),
    # empty lists and axes, axis forms
    ("empty-list", {"learning_rate": "[]"}, "", ["learning_rate = []", "means no runs"]),
    ("empty-axis", {}, "axis.atk = []\n", ["axis.atk = []", "means no runs"]),
    ("axis-of-values", {}, "axis.atk = [1, 2]\n", ["axis.atk = [1, 2]", "array of tables"]),
    ("axis-table", NO_ATTACK, '[axis.atk]\nattack = "empire"\n', ["axis.atk", "array of tables"]),
    ("axis-empty-table", {}, "[[axis.atk]]\n", ["axis.atk #1", "sets no field"]),
    ("axis-not-table", {"axis": "3"}, "", ["axis = 3", "arrays of tables"]),
    ("axis-empty-list", {}, "[[axis.lr]]\nlearning_rate = []\n", ["learning_rate = []", "no runs"]),
    # keys
    ("unknown-key", {"baselines": "true"}, "", ["baselines = true", "did you mean 'baseline'"]),
    (
        "unknown-axis-key",
        {},
        '[[axis.atk]]\nattak = "x"\n',
        ['attak = "x"', "unknown configuration"],
    ),
    (
        "field-twice",
        {},
        '[[axis.r]]\ngar = "krum"\n',
        ['gar = "krum"', "also set at the top level"],
    ),
    ("baseline-string", {"baseline": '"no"'}, "", ['baseline = "no"', "true or false"]),
    ("name-not-string", {"name": "3"}, "", ["name = 3", "string"]),
    ("name-a-path", {"name": '"../escape"'}, "", ['name = "../escape"', "without /"]),
    ("description-table", {"description": "{a = 1}"}, "", ["description = { a = 1 }", "string"]),
    # what would run nothing, or only by accident
    ("all-left-out", {"gar": '"bulyan"'}, "", ["every combination is left out", "bulyan"]),
    (
        "product-too-large",
        {f: "[" + ", ".join(["0.1"] * 20) + "]" for f in ("learning_rate", "momentum", "dampening")}
        | {"l2_regularize": "[" + ", ".join(["0.0"] * 20) + "]"},
        "",
        ["160000 combinations (20 learning_rate x 20 momentum", "at most 100000"],
    ),
]

# (id, whole file text, expected fragments); "SELF" is replaced by the file's name
WHOLE_FILES = [
    ("empty-file", "", ["sets no configuration field", "default configuration"]),
    ("meta-only", 'name = "x"\nbaseline = true\n', ["sets no configuration field"]),
    ("invalid-toml", "gar = \n", ["invalid TOML"]),
    ("include-self", 'include = ["SELF"]\n', ['include = "SELF"', "include cycle SELF -> SELF"]),
    ("include-unknown", 'include = ["no-such-preset"]\n', ["no-such-preset", "unknown preset"]),
    ("include-missing", 'include = ["missing.toml"]\n', ['include = "missing.toml"', "no such"]),
    ("include-not-names", "include = [1]\n", ["include = [1]", "preset names"]),
    ("include-empty", "include = []\n", ["include = []", "means no runs"]),
    ("include-and-fields", 'include = ["smoke"]\ngar = "krum"\n', ["include", "nothing else"]),
]

# (id, extra command-line arguments, expected fragments)
OPTION_CASES = [
    ("set-not-a-table", ["--set", "attack_args=factor"], ["--set attack_args=factor", "table"]),
    ("set-no-value", ["--set", "nb_steps="], ["--set nb_steps=", "no value"]),
    ("set-no-field", ["--set", "=3"], ["--set '=3'", "FIELD=VALUE"]),
    ("set-unknown-field", ["--set", "no_such=1"], ["--set no_such=1", "unknown configuration"]),
    ("set-misspelt", ["--set", "learnin_rate=1"], ["--set learnin_rate=1", "'learning_rate'"]),
    ("set-grid-key", ["--set", "seeds=1-3"], ["--set seeds=1-3", "--seeds"]),
    ("set-bad-toml", ["--set", "learning_rate=[0.5,"], ["learning_rate=[0.5,", "TOML"]),
    ("set-empty-list", ["--set", "gar=[]"], ["--set gar=[]", "means no runs"]),
    ("set-zero-workers", ["--set", "nb_workers=0"], ["--set nb_workers=0", "positive"]),
    ("set-nan", ["--set", "learning_rate=nan"], ["--set learning_rate=nan", "finite"]),
    ("set-str-for-float", ["--set", 'momentum="0.9"'], ['--set momentum="0.9"', "finite"]),
    ("set-unknown-rule", ["--set", "gar=nosuchrule"], ["--set gar=nosuchrule", "unknown"]),
    ("set-f-too-large", ["--set", "nb_decl_byz=9"], ["--set nb_decl_byz=9", "nb_workers 7"]),
    ("seeds-billion", ["--seeds", "1-1000000000"], ["--seeds '1-1000000000'", "at most 10000"]),
    ("seeds-word", ["--seeds", "abc"], ["--seeds 'abc'", "1-5"]),
    ("seeds-reversed", ["--seeds", "5-1"], ["--seeds '5-1'", "empty range"]),
    ("seeds-too-big", ["--seeds", "2147483648"], ["--seeds '2147483648'", "out of range"]),
    ("seeds-negative", ["--seeds", "-1"], ["--seeds '-1'", "0 to 2147483647"]),
    ("seeds-twice", ["--seeds", "1,2,1"], ["--seeds '1,2,1'", "twice"]),
]


def _refused(path: Path, extra: list[str], capsys, tmp_path: Path) -> str:
    """The line of the refused dry-run; nothing written in its output folder."""
    out = tmp_path / "out"
    line = refusal(
        sweep.main, ["--grid", str(path), "--dry-run", "--output", str(out), *extra], capsys
    )
    assert line.startswith(f"{PROG}: error: "), line
    assert not out.exists()
    return line


def _api_error(path: Path, extra: list[str]) -> str:
    """The ValueError of the Python API on the same input."""
    items = [extra[i + 1] for i in range(0, len(extra), 2) if extra[i] == "--set"]
    seeds = next((extra[i + 1] for i in range(0, len(extra), 2) if extra[i] == "--seeds"), None)
    with pytest.raises(ValueError) as info:
        grid_lib.load_grid(path, sweep.parse_overrides(items, seeds))
    return str(info.value)


@pytest.mark.parametrize(
    ("changes", "tail", "expected"),
    [case[1:] for case in FILE_CASES],
    ids=[case[0] for case in FILE_CASES],
)
def test_bad_grid_is_refused_in_one_line(changes, tail, expected, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(grid_text(changes, tail))
    line = _refused(path, [], capsys, tmp_path)
    assert f"grid {path}: " in line, line
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert line == f"{PROG}: error: {_api_error(path, [])}"


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in WHOLE_FILES], ids=[c[0] for c in WHOLE_FILES]
)
def test_bad_file_is_refused_in_one_line(text, expected, tmp_path, capsys):
    path = tmp_path / "whole.toml"
    path.write_text(text.replace("SELF", path.name))
    line = _refused(path, [], capsys, tmp_path)
    assert str(path) in line, line
    for fragment in expected:
        assert fragment.replace("SELF", path.name) in line, (fragment, line)
    assert line == f"{PROG}: error: {_api_error(path, [])}"


@pytest.mark.parametrize(
    ("extra", "expected"), [case[1:] for case in OPTION_CASES], ids=[c[0] for c in OPTION_CASES]
)
def test_bad_set_or_seeds_is_refused_in_one_line(extra, expected, tmp_path, capsys):
    path = tmp_path / "good.toml"
    path.write_text(grid_text())
    started = time.perf_counter()
    line = _refused(path, extra, capsys, tmp_path)
    assert time.perf_counter() - started < 5  # --seeds 1-1000000000 builds no list
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert line == f"{PROG}: error: {_api_error(path, extra)}"


def test_set_value_matching_no_axis_value(tmp_path, capsys):
    path = tmp_path / "axis.toml"
    path.write_text(
        grid_text(tail="[[axis.lr]]\nlearning_rate = 0.1\n[[axis.lr]]\nlearning_rate = 0.2\n")
    )
    line = _refused(path, ["--set", "learning_rate=0.3"], capsys, tmp_path)
    assert "--set learning_rate=0.3: matches no value of axis 'lr'" in line
    assert "learning_rate: 0.1, 0.2" in line


def test_include_cycle_is_named(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('include = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('include = ["a.toml"]\n')
    line = _refused(tmp_path / "a.toml", [], capsys, tmp_path)
    assert f'grid {tmp_path / "b.toml"}: include = "a.toml"' in line
    assert "include cycle a.toml -> b.toml -> a.toml" in line
    with pytest.raises(ValueError) as info:
        grid_lib.load_grid(tmp_path / "a.toml")
    assert line == f"{PROG}: error: {info.value}"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # a bad value last in a list, and in one combination of the product only
        ({"learning_rate": "[0.1, 0.2, 0.3, -0.5]"}, "learning_rate = -0.5"),
        ({"nb_workers": "[9, 3]", "nb_decl_byz": "[1, 3]"}, "nb_decl_byz = 3"),
        (
            {"gar": '["median", "krum"]', "gar_args": "[{}, {lower = 3}]"},
            "gar_args = { lower = 3 }",
        ),
    ],
    ids=["last-in-list", "one-combination", "args-of-one-rule"],
)
def test_every_value_of_the_product_is_checked(changes, expected, tmp_path):
    path = tmp_path / "product.toml"
    path.write_text(grid_text(changes))
    with pytest.raises(ValueError) as info:
        grid_lib.load_grid(path)
    assert str(info.value).startswith(f"grid {path}: ") and expected in str(info.value)


def test_left_out_combinations_stay_left_out(tmp_path):
    """A rule that does not admit (n, f) leaves the combination out (as reproduce.py), unlike an
    unknown rule or bad arguments."""
    path = tmp_path / "left.toml"
    path.write_text(grid_text({"gar": '["bulyan", "median"]', "nb_decl_byz": "[1, 2]"}))
    g = grid_lib.load_grid(path)
    assert sorted((r.config.gar, r.config.nb_decl_byz) for r in g.runs) == [
        ("bulyan", 1),
        ("median", 1),
        ("median", 2),
    ]
    assert [(c.gar, c.nb_decl_byz) for c, _ in g.left_out] == [("bulyan", 2)]


def test_presets_load_and_paper_dry_runs_quickly(tmp_path, capsys, monkeypatch):
    from jaxbyz import validation

    for name in grid_lib.preset_names():
        assert grid_lib.load_grid(name).runs, name
    calls = []
    check_config = validation.check_config
    monkeypatch.setattr(validation, "check_config", lambda c: calls.append(1) or check_config(c))
    started = time.perf_counter()
    code = sweep.main(["paper", "--dry-run", "--output", str(tmp_path / "paper")])
    seconds = time.perf_counter() - started
    assert code == 0
    assert "grid paper: 3680 runs (3520 attacked, 160 baseline)" in capsys.readouterr().out
    assert len(calls) <= 100, len(calls)  # probes (80: 16 worker settings x 5 grids), not 3680
    assert seconds < 20, seconds
