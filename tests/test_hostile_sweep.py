"""Hostile input and damaged state in a sweep's output folder: one clear line, nothing lost, never
a silent wrong number.

One small sweep (4 runs of one program, in 2 parts) runs once for the module; each case damages a
copy of its finished folder and checks, mostly without compiling (``--report-only``,
``--dry-run``, ``Store.load``), that the damaged file is named in one line and moved aside (never
deleted), that the good parts stay, and that refusals come before anything is computed. Three
cases run again: the resume after damage (the recomputed runs bitwise equal to the first ones),
``--add``, and the rerun that takes over a stale lock (nothing left to run there).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile import one_error_line, refusal

from jaxbyz.experiments import runner
from jaxbyz.experiments import sweep as sweep_cli
from jaxbyz.experiments.storage import Store

GRID = """
name = "hostile"
dataset = "synthetic"
nb_workers = 7
nb_decl_byz = 2
batch_size = 8
nb_steps = 6
evaluation_delta = 3
gar = "median"
attack = "little"
attack_args = { factor = 1.5, negative = true }
momentum_at = "worker"
seed = SEEDS
"""
RESULTS = (
    "status",
    "best_accuracy",
    "best_step",
    "final_accuracy",
    "final_loss",
    "mean_ratio",
    "mean_sampled_ratio",
    "share_under_bound",
)


def _grid(path: Path, seeds: list[int], name: str = "hostile") -> Path:
    text = GRID.replace("SEEDS", str(seeds)).replace('"hostile"', repr(name).replace("'", '"'))
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep (4 runs, one program, batches of 2: two part files), computed once;
    JAX's persistent cache points at the module's folder meanwhile (the reruns compile nothing
    new), then is put back."""
    import jax
    from jax._src import compilation_cache
    from test_sweep import install_standins

    from jaxbyz import cache as compilation_cache_dir

    install_standins()
    base = tmp_path_factory.mktemp("hostile-sweep")
    cache = base / "cache"
    options = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in options}
    compilation_cache_dir.enable(cache)
    compilation_cache.reset_cache()  # a process that compiled before checks the cache again
    grid = _grid(base / "hostile.toml", [1, 2, 3, 4])
    out = base / "out"
    argv = ["--grid", str(grid), "--output", str(out), "--max-batch", "2", "--no-plots"]
    argv += ["--no-progress", "--cache-dir", str(cache)]
    assert sweep_cli.main(argv) == 0
    assert len(_parts(out)) == 2 and not (out / ".lock").exists()
    yield {"grid": grid, "out": out, "cache": cache, "base": base}
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture
def out(finished, tmp_path):
    """A copy of the finished sweep's folder."""
    return Path(shutil.copytree(finished["out"], tmp_path / "out"))


@pytest.fixture
def argv(finished):
    """The sweep's command line for a folder (and a grid: the module's by default)."""

    def make(folder: Path, *extra: str, grid: Path | None = None) -> list[str]:
        args = ["--grid", str(grid or finished["grid"]), "--output", str(folder)]
        args += ["--max-batch", "2", "--no-plots", "--no-progress"]
        return [*args, "--cache-dir", str(finished["cache"]), *extra]

    return make


@pytest.fixture
def no_compiling(monkeypatch):
    """Fail the test if the sweep gets as far as running anything."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the sweep ran; it should have refused before")

    monkeypatch.setattr(runner.Sweep, "run", forbidden)


def _parts(folder: Path) -> list[Path]:
    return sorted((folder / "parts").glob("*.npz"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path: bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _recorded(folder: Path) -> str:
    return next(x for x in (folder / "report.md").read_text().splitlines() if "runs recorded" in x)


def _warning(err: str, running: bool = False) -> str:
    """The single warning line of ``err`` (no traceback; no other line but notes, and with
    ``running`` the sweep's progress lines)."""
    if running:
        assert "Traceback" not in err, err
        lines = [x for x in err.splitlines() if x.startswith(("warning", "error"))]
        assert len(lines) == 1, err
        return lines[0]
    line = one_error_line(err)
    assert line.startswith("warning: "), line
    return line


def _report_only(folder: Path, capsys, *extra: str) -> str:
    """``--report-only --output folder``: exit 0; the single warning line printed."""
    assert sweep_cli.main(["--report-only", "--output", str(folder), "--no-plots", *extra]) == 0
    return _warning(capsys.readouterr().err)


def _assert_same_runs(recorded: tuple, expected: tuple) -> None:
    """The same results and curves, bitwise, for every run of ``expected``."""
    (rows, curves), (before_rows, before_curves) = recorded, expected
    for run_id in before_rows:
        for column in RESULTS:
            assert rows[run_id][column] == before_rows[run_id][column], (run_id, column)
        for field in ("steps", "accuracy", "loss", "ratio", "sampled_ratio"):
            np.testing.assert_array_equal(
                getattr(curves[run_id], field), getattr(before_curves[run_id], field)
            )


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as part:
        return {k: part[k] for k in part.files}


def _rewrite(path: Path, **changes) -> None:
    """Write the part again with some arrays replaced (``None``: removed)."""
    arrays = {**_arrays(path), **changes}
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in arrays.items() if v is not None})
    path.write_bytes(buffer.getvalue())


def _rows(path: Path) -> list[dict]:
    return json.loads(str(_arrays(path)["rows"]))


# --------------------------------------------------------------------------------------------- #
# Damaged part files: named, moved aside, their runs not recorded


def _truncate(fraction: float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * fraction))])

    return damage


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _rows_without_run_id(path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "run_id"} for row in _rows(path)]
    _rewrite(path, rows=np.array(json.dumps(rows)))


def _shorter_arrays(path: Path) -> None:
    _rewrite(path, accuracy=_arrays(path)["accuracy"][:1])


DAMAGES = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated-1-byte": _truncate(0.0),
    "truncated-10pc": _truncate(0.1),
    "truncated-half": _truncate(0.5),
    "truncated-last-byte": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "truncated-central-directory": lambda p: p.write_bytes(p.read_bytes()[:-30]),
    "not-a-zip": lambda p: p.write_text("this is not a part file\n" * 20),
    "garbled-bytes": _garble,
    "zip-without-rows": lambda p: _rewrite(p, rows=None),
    "zip-of-other-files": lambda p: zipfile.ZipFile(p, "w").writestr("notes.txt", "hello"),
    "rows-not-json": lambda p: _rewrite(p, rows=np.array("{not json")),
    "rows-without-run-id": _rows_without_run_id,
    "rows-not-a-list": lambda p: _rewrite(p, rows=np.array('{"run_id": "x"}')),
    "arrays-shorter-than-rows": _shorter_arrays,
    "run-ids-not-in-rows": lambda p: _rewrite(p, run_ids=np.array(["nope", "neither"])),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_report_only_moves_a_damaged_part_aside(out, capsys, damage):
    good, bad = _parts(out)
    good_bytes = good.read_bytes()
    DAMAGES[damage](bad)
    payload = bad.read_bytes()
    line = _report_only(out, capsys)
    moved = out / "parts" / "damaged" / bad.name
    assert line.startswith(f"warning: part file {bad} cannot be read ("), line
    assert f"moved to {moved};" in line and "the report covers the readable parts" in line
    assert moved.read_bytes() == payload  # moved, not deleted
    assert _parts(out) == [good] and good.read_bytes() == good_bytes
    assert len(pd.read_csv(out / "runs.csv")) == 2
    assert "runs recorded: 2 of 4 (2 completed)" in _recorded(out)
    # reported once: the next report is clean
    assert sweep_cli.main(["--report-only", "--output", str(out), "--no-plots"]) == 0
    assert capsys.readouterr().err == ""


def test_a_folder_named_like_a_part_is_moved_aside(out, capsys):
    folder = out / "parts" / "0-folder.npz"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    line = _report_only(out, capsys)
    assert f"part file {folder} cannot be read (a folder, not a file)" in line
    assert (out / "parts" / "damaged" / folder.name / "inside.txt").read_text() == "kept"
    assert len(_parts(out)) == 2 and "runs recorded: 4 of 4" in _recorded(out)


def test_an_unreadable_part_is_moved_aside(out, capsys):
    bad = _parts(out)[1]
    bad.chmod(0)
    try:
        with open(bad, "rb"):
            pytest.skip("chmod 000 does not stop this user (root) from reading")
    except PermissionError:
        pass
    line = _report_only(out, capsys)
    assert f"part file {bad} cannot be read (PermissionError" in line
    assert (out / "parts" / "damaged" / bad.name).exists() and len(_parts(out)) == 1


def test_store_load_skips_damaged_parts_and_keeps_the_good_ones(out):
    good, bad = _parts(out)
    bad.write_bytes(bad.read_bytes()[:100])
    second = out / "parts" / "1-second.npz"
    second.write_text("garbage")
    foreign_tmp = out / "parts" / ".notes.tmp"  # not one of the store's temporary files
    foreign_tmp.write_text("kept")
    store = Store(out)
    rows, curves = store.load()
    assert set(rows) == set(curves) == {r["run_id"] for r in _rows(good)}
    assert sorted(d.path.name for d in store.damaged) == sorted([bad.name, second.name])
    assert all(d.moved == out / "parts" / "damaged" / d.path.name for d in store.damaged)
    line = store.damage_line("tail")
    assert line.startswith(f"warning: 2 part files in {out / 'parts'} cannot be read (")
    assert f"moved to {out / 'parts' / 'damaged'}{os.sep}; tail" in line
    assert foreign_tmp.read_text() == "kept"
    # a name taken in damaged/ is never overwritten
    bad.write_text("second damaged copy")
    store.load()
    assert (out / "parts" / "damaged" / f"{bad.name}-1").read_text() == "second damaged copy"
    assert len(list((out / "parts" / "damaged").iterdir())) == 3


def test_dry_run_names_a_damaged_part_and_leaves_it(out, argv, capsys):
    bad = _parts(out)[1]
    bad.write_bytes(b"")
    before = _snapshot(out)
    assert sweep_cli.main(argv(out, "--dry-run")) == 0
    captured = capsys.readouterr()
    line = _warning(captured.err)
    assert f"part file {bad} cannot be read (empty file): left in place" in line
    assert "their runs count as to run" in line
    assert "2 runs already done; 2 to run in 1 programs" in captured.out
    assert _snapshot(out) == before  # a dry run writes nothing


def test_report_only_with_only_damaged_parts_refuses_in_one_line(out, capsys):
    for part in _parts(out):
        part.write_bytes(part.read_bytes()[:50])
    names = [p.name for p in _parts(out)]
    line = refusal(sweep_cli.main, ["--report-only", "--output", str(out)], capsys)
    assert f"--output '{out}' holds no readable results: 2 part files" in line
    assert f"moved to {out / 'parts' / 'damaged'}" in line and "rerun the sweep's command" in line
    assert sorted(p.name for p in (out / "parts" / "damaged").iterdir()) == sorted(names)


def test_resume_after_damage_recomputes_the_same_numbers(out, argv, capsys):
    """Must hold: truncate a part of a finished sweep, rerun the same command: every run once in
    runs.csv, the damaged runs computed again, bitwise equal (same program, same seeds)."""
    before_rows, before_curves = Store(out).load()
    good, bad = _parts(out)
    damaged_ids = {r["run_id"] for r in _rows(bad)}
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    assert sweep_cli.main(argv(out)) == 0
    line = _warning(capsys.readouterr().err, running=True)
    assert f"part file {bad} cannot be read" in line and "run again" in line
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 4 and table["run_id"].is_unique
    assert set(table["run_id"]) == set(before_rows)
    _assert_same_runs(Store(out).load(), (before_rows, before_curves))
    new = [p for p in _parts(out) if p != good]
    assert len(new) == 1 and {r["run_id"] for r in _rows(new[0])} == damaged_ids
    assert (out / "parts" / "damaged" / bad.name).exists()
    assert "runs recorded: 4 of 4" in _recorded(out) and not (out / ".lock").exists()


def test_a_folder_without_parts_resumes_from_its_tables(out, argv, capsys):
    """A results folder kept without ``parts/`` (committed tables of a sweep cut short): the
    sweep adopts the runs of ``runs.csv`` and ``curves.csv.gz``, computes only the others, and
    its rebuilt tables hold every run, the adopted ones unchanged."""
    before_rows, before_curves = Store(out).load()
    shutil.rmtree(out / "parts")
    table = pd.read_csv(out / "runs.csv", dtype={"run_id": str})
    kept = set(table["run_id"][:2])
    table[table["run_id"].isin(kept)].to_csv(out / "runs.csv", index=False)
    assert sweep_cli.main(argv(out, "--dry-run")) == 0
    assert "2 runs already done; 2 to run" in capsys.readouterr().out
    assert not (out / "parts").exists()  # a dry run writes nothing
    assert sweep_cli.main(argv(out)) == 0
    note = [x for x in capsys.readouterr().err.splitlines() if "holds no part" in x]
    assert note == [
        f"note: {out / 'parts'} holds no part: the 2 runs of {out / 'runs.csv'} count as "
        "finished (their rows and curves now stored as parts)"
    ]
    recorded = Store(out).load()
    assert set(recorded[0]) == set(before_rows) and len(pd.read_csv(out / "runs.csv")) == 4
    _assert_same_runs(recorded, (before_rows, before_curves))
    adopted = [p for p in _parts(out) if {r["run_id"] for r in _rows(p)} == kept]
    assert len(adopted) == 1 and len(_parts(out)) == 2  # the adopted runs, the computed batch


def test_tables_are_adopted_only_without_parts_and_only_when_readable(out):
    """Parts moved aside as damaged are the sweep's own (their runs are computed again); an
    unreadable ``runs.csv`` adopts nothing and writes nothing."""
    for part in _parts(out):
        part.write_bytes(b"")
    store = Store(out)
    assert store.load() == ({}, {}) and len(store.damaged) == 2
    assert store.load() == ({}, {}) and store.adoption_line() is None
    shutil.rmtree(out / "parts")
    (out / "runs.csv").write_bytes(b"\x00\xff garbage \x00")
    assert store.load() == ({}, {}) and store.adoption_line() is None
    assert not (out / "parts").exists()


# --------------------------------------------------------------------------------------------- #
# Damaged tables and metadata: named, rebuilt or ignored


def test_damaged_runs_csv_is_named_and_rebuilt(out, capsys):
    (out / "runs.csv").write_bytes(b"\x00\xff garbage \x00")
    line = _report_only(out, capsys)
    assert line.startswith(f"warning: {out / 'runs.csv'} cannot be read (")
    assert line.endswith("rebuilt from parts/")
    assert len(pd.read_csv(out / "runs.csv")) == 4


def test_damaged_curves_are_named_and_rebuilt(out, capsys):
    path = out / "curves.csv.gz"
    path.write_bytes(path.read_bytes()[:-12])
    line = _report_only(out, capsys)
    assert line.startswith(f"warning: {path} cannot be read (") and "rebuilt" in line
    assert pd.read_csv(path)["run_id"].nunique() == 4


def test_damaged_runs_csv_without_parts_refuses(out, capsys):
    shutil.rmtree(out / "parts")
    (out / "runs.csv").write_text("")
    line = refusal(sweep_cli.main, ["--report-only", "--output", str(out)], capsys)
    assert f"{out / 'runs.csv'} cannot be read (EmptyDataError" in line
    assert "no parts/ to rebuild it from" in line


@pytest.mark.parametrize(
    "content", ["{ not json", "[1, 2, 3]", '{"sessions": 3}', '{"run_ids": "abc"}', "\xff"]
)
def test_damaged_sweep_json_is_moved_aside(out, capsys, content):
    path = out / "sweep.json"
    path.write_text(content, encoding="latin-1")
    payload = path.read_bytes()
    line = _report_only(out, capsys)
    assert line.startswith(f"warning: {path} cannot be read (")
    assert f"moved to {out / 'sweep.json.damaged'}" in line
    assert (out / "sweep.json.damaged").read_bytes() == payload
    assert "runs recorded: 4 of 4" in _recorded(out)


def test_damaged_sweep_json_is_rebuilt_by_the_sweep(out, argv, capsys):
    (out / "sweep.json").write_text("{")
    assert sweep_cli.main(argv(out)) == 0  # nothing to run: no compiling
    line = _warning(capsys.readouterr().err, running=True)
    assert "sweep.json cannot be read" in line and "metadata is rebuilt" in line
    meta = json.loads((out / "sweep.json").read_text())
    assert len(meta["run_ids"]) == 4 and meta["grids"] == ["hostile"]


# --------------------------------------------------------------------------------------------- #
# An output folder that cannot be written: refused before anything is computed


def test_output_that_is_a_file_is_refused(tmp_path, argv, capsys, no_compiling):
    target = tmp_path / "results"
    target.write_text("a file")
    line = refusal(sweep_cli.main, argv(target), capsys)
    assert f"cannot write the sweep's results in {target} ({target} is a file" in line
    assert "give --output DIR" in line and target.read_text() == "a file"


def test_output_under_a_file_is_refused(tmp_path, argv, capsys, no_compiling):
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    line = refusal(sweep_cli.main, argv(blocker / "out" / "deeper"), capsys)
    assert f"({blocker} is a file, not a folder)" in line and "give --output DIR" in line
    assert blocker.read_text() == "a file"


def test_parts_that_is_a_file_is_refused(tmp_path, argv, capsys, no_compiling):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parts").write_text("a file")
    line = refusal(sweep_cli.main, argv(tmp_path / "out"), capsys)
    assert f"({tmp_path / 'out' / 'parts'} is a file, not a folder)" in line
    assert (tmp_path / "out" / "parts").read_text() == "a file"


def test_runs_csv_that_is_a_folder_is_refused(out, argv, capsys, no_compiling):
    (out / "runs.csv").unlink()
    (out / "runs.csv").mkdir()
    line = refusal(sweep_cli.main, argv(out), capsys)
    assert f"({out / 'runs.csv'} is a folder, not a file)" in line
    line = refusal(sweep_cli.main, ["--report-only", "--output", str(out)], capsys)
    assert f"({out / 'runs.csv'} is a folder, not a file)" in line


def test_read_only_location_is_refused(argv, capsys, no_compiling):
    target = Path("/sys/jaxbyz-hostile-test/out")
    try:
        target.parent.mkdir()
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys
        target.parent.rmdir()
        pytest.skip("/sys can be written here")
    line = refusal(sweep_cli.main, argv(target), capsys)
    assert f"cannot write the sweep's results in {target} (" in line
    assert "give --output DIR" in line


def test_missing_data_is_refused_before_the_folder_is_made(tmp_path, capsys, no_compiling):
    grid = tmp_path / "fmnist.toml"
    grid.write_text(
        f'dataset = "fashion-mnist"\ndata_dir = "{tmp_path / "empty"}"\nnb_steps = 2\n'
        'nb_workers = 7\nnb_decl_byz = 2\ngar = "median"\nattack = "little"\n'
    )
    (tmp_path / "empty").mkdir()
    target = tmp_path / "never-made"
    line = refusal(sweep_cli.main, ["--grid", str(grid), "--output", str(target)], capsys)
    assert "fashion-mnist" in line and str(tmp_path / "empty") in line
    assert not target.exists()


def test_report_only_on_a_file_or_nothing_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = refusal(sweep_cli.main, ["--report-only", "--output", str(tmp_path / "file")], capsys)
    assert "holds no results (not a folder)" in line
    missing = tmp_path / "missing"
    line = refusal(sweep_cli.main, ["--report-only", "--output", str(missing)], capsys)
    assert "holds no results (no such folder)" in line and not missing.exists()


# --------------------------------------------------------------------------------------------- #
# One sweep per folder


@pytest.fixture
def sleeper():
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def _lock(folder: Path, pid: int, host: str | None = None, command: str = "the other sweep"):
    lock = {"pid": pid, "host": host or socket.gethostname(), "command": command}
    (folder / ".lock").write_text(json.dumps(lock))


def test_a_live_lock_refuses_a_second_sweep(out, argv, capsys, sleeper, no_compiling):
    _lock(out, sleeper.pid, command="python -m jaxbyz.experiments.sweep smoke")
    before = _snapshot(out)
    line = refusal(sweep_cli.main, argv(out), capsys)
    assert f"--output '{out}' is in use by another sweep: PID {sleeper.pid} on " in line
    assert "running python -m jaxbyz.experiments.sweep smoke" in line
    assert f"remove {out / '.lock'}" in line
    assert _snapshot(out) == before  # the lock and everything else as they were


def test_a_lock_of_another_host_refuses(out, argv, capsys, no_compiling):
    _lock(out, 1, host="elsewhere.example")
    line = refusal(sweep_cli.main, argv(out), capsys)
    assert "PID 1 on elsewhere.example (another host: cannot be checked from here)" in line


def test_dry_run_and_report_only_need_no_lock(out, argv, capsys, sleeper):
    _lock(out, sleeper.pid)
    assert sweep_cli.main(argv(out, "--dry-run")) == 0
    assert "4 runs already done" in capsys.readouterr().out
    assert sweep_cli.main(argv(out, "--report-only")) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((out / ".lock").read_text())["pid"] == sleeper.pid


@pytest.mark.parametrize("content", ["dead", "garbled"])
def test_a_stale_lock_is_taken_over_with_a_note(out, argv, capsys, content):
    if content == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait()
        _lock(out, finished.pid, command="the killed sweep")
        expected = f"note: took over the stale lock {out / '.lock'} of PID {finished.pid}"
    else:
        (out / ".lock").write_text("\x00 not a lock")
        expected = f"note: took over the unreadable lock {out / '.lock'}"
    assert sweep_cli.main(argv(out)) == 0  # everything done: nothing compiled
    err = capsys.readouterr().err
    notes = [x for x in err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(expected), err
    assert not (out / ".lock").exists()  # released at the end
    assert len(pd.read_csv(out / "runs.csv")) == 4


@pytest.mark.parametrize("failure", [ValueError("one line"), KeyboardInterrupt()])
def test_the_lock_is_released_on_errors(out, argv, capsys, monkeypatch, failure):
    def fail(self):
        assert (out / ".lock").exists()
        raise failure

    monkeypatch.setattr(runner.Sweep, "run", fail)
    if isinstance(failure, ValueError):
        assert "one line" in refusal(sweep_cli.main, argv(out), capsys)
    else:
        with pytest.raises(KeyboardInterrupt):
            sweep_cli.main(argv(out))
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------------------------------- #
# Another grid in the folder: refused unless --add


def test_another_grid_is_refused(out, argv, capsys, tmp_path, no_compiling):
    other = _grid(tmp_path / "other.toml", [1, 2, 5], name="other")
    before = _snapshot(out)
    for extra in ((), ("--dry-run",)):
        line = refusal(sweep_cli.main, argv(out, *extra, grid=other), capsys)
        assert f"--output '{out}' holds another grid: 'hostile' there (4 runs)" in line
        assert "'other' here (3 runs): 1 run(s) added, 2 removed" in line
        assert "--add to add this grid's runs" in line
    line = refusal(sweep_cli.main, argv(out, "--report-only", grid=other), capsys)
    assert "1 run(s) added, 2 removed" in line and "--report-only --output DIR without" in line
    assert _snapshot(out) == before


def test_parts_of_another_grid_without_sweep_json_are_refused(out, argv, capsys, tmp_path):
    (out / "sweep.json").unlink()  # written before grids were recorded, or lost
    other = _grid(tmp_path / "other.toml", [1, 2], name="other")
    line = refusal(sweep_cli.main, argv(out, "--dry-run", grid=other), capsys)
    assert "holds another grid: (unnamed) there (4 runs recorded)" in line
    assert "0 run(s) added, 2 removed" in line


def test_same_grid_under_another_name_resumes(out, argv, capsys, tmp_path):
    renamed = _grid(tmp_path / "renamed.toml", [1, 2, 3, 4])  # same runs, another file name
    assert sweep_cli.main(argv(out, "--dry-run", grid=renamed)) == 0
    assert "4 runs already done; 0 to run" in capsys.readouterr().out


def test_add_runs_another_grid_into_the_folder(out, argv, capsys, tmp_path):
    more = _grid(tmp_path / "more.toml", [3, 4, 5, 6], name="more")
    assert sweep_cli.main(argv(out, "--dry-run", "--add", grid=more)) == 0
    assert "2 runs already done; 2 to run in 1 programs" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in _parts(out)}
    assert sweep_cli.main(argv(out, "--add", grid=more)) == 0
    capsys.readouterr()
    assert all((out / "parts" / name).read_bytes() == data for name, data in before.items())
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["grids"] == ["hostile", "more"] and len(meta["run_ids"]) == 6
    assert meta["name"] == "hostile + more" and meta["runs_total"] == 6
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 6 and table["run_id"].is_unique
    assert sorted(table["seed"]) == [1, 2, 3, 4, 5, 6]
    assert "runs recorded: 6 of 6 (6 completed)" in _recorded(out)
    # the folder's grid is now the union: either grid alone needs --add, nothing runs again
    line = refusal(sweep_cli.main, argv(out, "--dry-run"), capsys)
    assert "'hostile' + 'more' there (6 runs), 'hostile' here (4 runs): 0 run(s) added" in line
    assert sweep_cli.main(argv(out, "--dry-run", "--add")) == 0
    assert "4 runs already done; 0 to run" in capsys.readouterr().out
    assert sweep_cli.main(["--report-only", "--output", str(out), "--no-plots"]) == 0
    assert "runs recorded: 6 of 6" in _recorded(out)


def test_add_is_refused_with_report_only(out, argv, capsys):
    line = refusal(sweep_cli.main, argv(out, "--report-only", "--add"), capsys)
    assert "--add" in line and "--report-only" in line


def test_report_counts_every_recorded_run(out, capsys):
    """A part of a run outside the folder's recorded grid (copied in by hand) counts in the
    total: never "runs recorded: 5 of 4"."""
    good = _parts(out)[0]
    rows = _rows(good)
    rows[0]["run_id"] = "0123456789ab"
    shutil.copy(good, out / "parts" / "9-copied.npz")
    _rewrite(
        out / "parts" / "9-copied.npz",
        rows=np.array(json.dumps(rows[:1])),
        run_ids=np.array(["0123456789ab"]),
        **{k: v[:1] for k, v in _arrays(good).items() if k in ("accuracy", "loss", "ratio")},
        sampled_ratio=_arrays(good)["sampled_ratio"][:1],
    )
    assert sweep_cli.main(["--report-only", "--output", str(out), "--no-plots"]) == 0
    assert capsys.readouterr().err == ""
    assert "runs recorded: 5 of 5" in _recorded(out)
