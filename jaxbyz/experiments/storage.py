"""A sweep's output folder, written so that no finished work is lost, and read so that a damaged
file costs only its own runs.

Each finished batch is one file ``parts/<id>.npz`` written to a temporary name then renamed
(``os.replace``), so a sweep killed at any moment (SIGKILL included) loses at most the batches in
flight, and a rerun skips every run found in ``parts/``. A part that cannot be read (empty,
truncated, not a zip, arrays missing or of the wrong shapes, rows that do not parse) is moved
into ``parts/damaged/`` (never deleted) with one warning line; its runs count as not recorded,
so the next session of the sweep computes them again. The run table ``runs.csv`` (one row per
run) and the curves ``curves.csv.gz`` (per run and evaluation step: top-1 accuracy, and the mean
loss, variance-norm ratio of the honest submissions and of the sampled gradients over the steps
since the previous evaluation) are rebuilt from the parts; ``sweep.json`` holds the sweep's
metadata (the grid's run ids, the session history); a damaged one is moved aside and rebuilt.
A folder kept without ``parts/`` (its tables committed, the working files not) resumes from its
tables: their runs are stored as parts and count as finished.

One sweep at a time writes a folder: :meth:`Store.lock` takes ``.lock`` (the PID, host and
command of the holder), taken over when its process no longer runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CURVE_ARRAYS = ("accuracy", "loss", "ratio", "sampled_ratio")
REQUIRED_ARRAYS = ("rows", "run_ids", "steps", "accuracy", "loss", "ratio")
REQUIRED_ROW_KEYS = ("run_id", "name", "role", "status")
CURVE_COLUMNS = ["run_id", "step", "accuracy", "loss", "ratio", "sampled_ratio"]
TABLES = ("runs.csv", "curves.csv.gz", "sweep.json", "report.md", ".lock")
_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic_write_bytes's temporary files


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fd:
            fd.write(payload)
            fd.flush()
            os.fsync(fd.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclasses.dataclass
class Curves:
    """The curves of one run, one value per evaluation step."""

    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    ratio: np.ndarray
    sampled_ratio: np.ndarray


class DamagedPart(Exception):
    """A part file that cannot be read (the message says why)."""


@dataclasses.dataclass
class Damaged:
    """A file that could not be read: where it was, where it went (``None``: not moved)."""

    path: Path
    reason: str
    moved: Path | None = None


class Store:
    """A sweep's output folder: ``parts/`` (one file per finished batch), the rebuilt tables."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.damaged_dir = self.parts / "damaged"
        self.damaged: list[Damaged] = []  # the parts the last load() could not read
        self.meta_damaged: Damaged | None = None  # sweep.json, if read_meta() could not read it
        self.adopted = 0  # the runs the last load() took from the tables (no part ever stored)
        self.adopted_stored = False  # and whether it wrote them as parts

    # -- parts -------------------------------------------------------------------------------- #

    def write_part(self, rows: list[dict[str, Any]], curves: dict[str, Curves]) -> Path:
        """One finished batch, atomically: its rows and the curves of its runs."""
        self.parts.mkdir(parents=True, exist_ok=True)
        ids = sorted(r["run_id"] for r in rows)
        stamp = f"{time.time_ns()}-{hashlib.sha1(''.join(ids).encode()).hexdigest()[:12]}"
        ordered = [c for c in (curves.get(r["run_id"]) for r in rows) if c is not None]
        buffer = io.BytesIO()
        np.savez(
            buffer,
            rows=np.array(json.dumps(rows, default=_json_default)),
            run_ids=np.array([r["run_id"] for r in rows if r["run_id"] in curves], dtype=str),
            steps=ordered[0].steps if ordered else np.zeros(0, np.int64),
            accuracy=np.stack([c.accuracy for c in ordered]) if ordered else np.zeros((0, 0)),
            loss=np.stack([c.loss for c in ordered]) if ordered else np.zeros((0, 0)),
            ratio=np.stack([c.ratio for c in ordered]) if ordered else np.zeros((0, 0)),
            sampled_ratio=np.stack([c.sampled_ratio for c in ordered])
            if ordered
            else np.zeros((0, 0)),
        )
        path = self.parts / f"{stamp}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def load(self, quarantine: bool = True) -> tuple[dict[str, dict[str, Any]], dict[str, Curves]]:
        """Every recorded run (a later part supersedes an earlier one for the same run).

        A part that cannot be read is left out and listed in ``self.damaged``; with
        ``quarantine`` it is moved into ``parts/damaged/`` (its name kept), so that it is
        reported once and its runs are computed again."""
        rows: dict[str, dict[str, Any]] = {}
        curves: dict[str, Curves] = {}
        self.damaged = []
        self.adopted, self.adopted_stored = 0, False
        if self._never_held_a_part():
            return self._adopt_tables(write=quarantine)
        for stale in self.parts.glob(".*.tmp"):  # writes cut short by a kill
            match = _TMP.match(stale.name)
            if match and stale.is_file() and not _alive(match.group(1)):
                stale.unlink(missing_ok=True)
        for path in sorted(self.parts.glob("*.npz")):
            try:
                part_rows, part_curves = read_part(path)
            except DamagedPart as err:
                self.damaged.append(Damaged(path, str(err)))
                continue
            for row in part_rows:
                rows[row["run_id"]] = row
                curves.pop(row["run_id"], None)
            curves.update(part_curves)
        if quarantine:
            for item in self.damaged:
                item.moved = _move_aside(item.path, self.damaged_dir)
        return rows, curves

    def _never_held_a_part(self) -> bool:
        """No part in ``parts/``, none moved aside: no batch of a sweep ever finished here."""
        held = (
            (*self.parts.glob("*.npz"), *self.damaged_dir.glob("*")) if self.parts.is_dir() else ()
        )
        return not held

    def _adopt_tables(self, write: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Curves]]:
        """The runs of ``runs.csv`` and ``curves.csv.gz`` when no part was ever stored here
        (parts moved aside as damaged are the sweep's own: their runs are computed again).

        A folder copied or committed without its parts (they are the sweep's working files;
        the tables are what one keeps) would otherwise have every run computed again, and the
        first batch's rebuilt tables would hold only the new runs. The tables are read back as
        the parts' rows and curves and, with ``write``, stored as parts (grouped by evaluation
        steps), so the sweep resumes where the tables end; ``self.adopted`` counts the runs.
        Unreadable tables adopt nothing (they are rebuilt from the new parts)."""
        table_path, curves_path = self.root / "runs.csv", self.root / "curves.csv.gz"
        if not table_path.is_file():
            return {}, {}
        try:
            _check_runs_csv(table_path)
            table = read_run_table(table_path)
        except Exception:
            return {}, {}
        rows = {
            str(record["run_id"]): {k: _python_value(v) for k, v in record.items()}
            for record in table.to_dict("records")
        }
        curves = _read_curves(curves_path, set(rows))
        self.adopted = len(rows)
        self.adopted_stored = write and bool(rows)
        if self.adopted_stored:
            by_steps: dict[tuple, list[str]] = {}
            for run_id in rows:
                steps = curves[run_id].steps if run_id in curves else ()
                by_steps.setdefault(tuple(int(s) for s in steps), []).append(run_id)
            for ids in by_steps.values():
                self.write_part([rows[i] for i in ids], {i: curves[i] for i in ids if i in curves})
        return rows, curves

    def adoption_line(self) -> str | None:
        """One line saying that the last :meth:`load` took its runs from the tables."""
        if not self.adopted:
            return None
        stored = " (their rows and curves now stored as parts)" if self.adopted_stored else ""
        return (
            f"note: {self.parts} holds no part: the {self.adopted} runs of "
            f"{self.root / 'runs.csv'} count as finished{stored}"
        )

    def damage_line(self, tail: str = "") -> str | None:
        """One warning line naming the parts the last :meth:`load` could not read."""
        text = self.damage_text()
        if text is None:
            return None
        return f"warning: {text}" + (f"; {tail}" if tail else "")

    def damage_text(self) -> str | None:
        """What the last :meth:`load` could not read, and where it went."""
        if not self.damaged:
            return None
        moved = [d for d in self.damaged if d.moved is not None]
        listed = "; ".join(f"{d.path.name}: {d.reason}" for d in self.damaged[:3])
        if len(self.damaged) > 3:
            listed += f"; and {len(self.damaged) - 3} more"
        if len(self.damaged) == 1:
            head = f"part file {self.damaged[0].path} cannot be read ({self.damaged[0].reason})"
        else:
            head = f"{len(self.damaged)} part files in {self.parts} cannot be read ({listed})"
        if len(moved) == len(self.damaged):
            where = moved[0].moved if len(moved) == 1 else f"{self.damaged_dir}{os.sep}"
            head += f": moved to {where}"
        elif moved:
            head += f": {len(moved)} moved to {self.damaged_dir}{os.sep}, the others could not be"
        else:
            head += ": left in place"
        return head

    # -- tables ------------------------------------------------------------------------------- #

    def write_tables(
        self, rows: dict[str, dict[str, Any]], curves: dict[str, Curves] | None = None
    ) -> None:
        """Rebuild ``runs.csv`` and (given ``curves``) ``curves.csv.gz``, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(list(rows.values()))
        atomic_write_bytes(self.root / "runs.csv", table.to_csv(index=False).encode())
        if curves is None:
            return
        frames = [
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "step": c.steps,
                    "accuracy": c.accuracy,
                    "loss": c.loss,
                    "ratio": c.ratio,
                    "sampled_ratio": c.sampled_ratio,
                }
            )
            for run_id, c in curves.items()
        ]
        long = (
            pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)
        )
        buffer = io.BytesIO()
        long.to_csv(buffer, index=False, compression={"method": "gzip", "mtime": 0})
        atomic_write_bytes(self.root / "curves.csv.gz", buffer.getvalue())

    def damaged_tables(self) -> list[Damaged]:
        """``runs.csv`` and ``curves.csv.gz`` when present but unreadable (rebuilt from the
        parts, so left in place)."""
        found = []
        for name, check in (("runs.csv", _check_runs_csv), ("curves.csv.gz", _check_curves)):
            path = self.root / name
            if not path.exists():
                continue
            try:
                check(path)
            except Exception as err:
                found.append(Damaged(path, _reason(err)))
        return found

    # -- metadata ----------------------------------------------------------------------------- #

    def read_meta(self, quarantine: bool = True) -> dict[str, Any]:
        """``sweep.json`` (empty if absent). A damaged one reads as empty and is recorded in
        ``self.meta_damaged``; with ``quarantine`` it is moved aside (``sweep.json.damaged``)."""
        self.meta_damaged = None
        path = self.root / "sweep.json"
        if not path.exists() and not path.is_symlink():
            return {}
        try:
            meta = json.loads(path.read_bytes().decode())
            problem = _meta_problem(meta)
        except Exception as err:
            problem = _reason(err)
        if problem is None:
            return meta
        moved = _move_aside(path, self.root, suffix=".damaged") if quarantine else None
        self.meta_damaged = Damaged(path, problem, moved)
        return {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(meta, indent=2, default=_json_default) + "\n"
        atomic_write_bytes(self.root / "sweep.json", payload.encode())

    # -- checks before a sweep writes --------------------------------------------------------- #

    def check_writable(self, create: bool) -> None:
        """Raise ``ValueError`` (one line naming the folder) unless the sweep can write its
        results here: with ``create``, the folder and ``parts/`` are created, and a probe file
        is written and removed in ``parts/``; otherwise a probe in the (existing) folder."""
        where = self.root
        try:
            if create:
                _make_folder(self.root)
                where = self.parts
                _make_folder(self.parts)
            elif not self.root.is_dir():
                raise ValueError(
                    f"--output {str(self.root)!r} holds no results (not a folder)"
                    if self.root.exists()
                    else f"--output {str(self.root)!r} holds no results (no such folder)"
                )
            for name in TABLES:
                path = self.root / name
                if path.is_dir():
                    raise _NotWritable(f"{path} is a folder, not a file")
            if (self.root / "plots").exists() and not (self.root / "plots").is_dir():
                raise _NotWritable(f"{self.root / 'plots'} is a file, not a folder")
            probe = where / f".write-probe.{os.getpid()}.tmp"
            with open(probe, "wb") as fd:
                fd.write(b"probe")
            probe.unlink()
        except _NotWritable as err:
            raise ValueError(_unwritable(self.root, str(err))) from None
        except OSError as err:
            raise ValueError(_unwritable(self.root, _os_reason(err, where))) from None

    # -- one sweep per folder ----------------------------------------------------------------- #

    @contextlib.contextmanager
    def lock(self, command: str, note: Any = None) -> Iterator[Path]:
        """Hold ``.lock`` while the block runs (released on any exit). A lock of a live process
        (or of another host) refuses with ``ValueError``; a stale one (its process gone) is
        taken over, ``note(line)`` saying so."""
        path = self.root / ".lock"
        token = f"{os.getpid()}-{time.time_ns()}"
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": token,
        }
        _take_lock(path, mine, note)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                if _read_lock(path).get("token") == token:
                    path.unlink()


class _NotWritable(Exception):
    pass


# ---------------------------------------------------------------------------------------------- #
# Reading parts


def read_part(path: Path) -> tuple[list[dict[str, Any]], dict[str, Curves]]:
    """The rows and curves of one part file, every array read (so a damaged byte anywhere
    fails its CRC here); raise :class:`DamagedPart` saying why it cannot be used."""
    try:
        if path.is_dir():
            raise DamagedPart("a folder, not a file")
        if path.stat().st_size == 0:
            raise DamagedPart("empty file")
        with open(path, "rb") as fd:
            if fd.read(4) != b"PK\x03\x04":
                raise DamagedPart("not a zip file (.npz)")
        with np.load(path, allow_pickle=False) as part:
            missing = [k for k in REQUIRED_ARRAYS if k not in part.files]
            if missing:
                raise DamagedPart(f"no {', '.join(missing)} array(s): not a sweep part")
            arrays = {k: part[k] for k in part.files if k in (*REQUIRED_ARRAYS, *CURVE_ARRAYS)}
    except DamagedPart:
        raise
    except Exception as err:
        raise DamagedPart(_reason(err)) from None
    return _part_contents(arrays)


def _part_contents(arrays: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], dict]:
    text = arrays["rows"]
    if text.shape != () or text.dtype.kind != "U":
        raise DamagedPart("rows is not a JSON string")
    try:
        rows = json.loads(str(text))
    except ValueError as err:
        raise DamagedPart(f"rows is not valid JSON ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DamagedPart("rows is not a list of runs")
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED_ROW_KEYS if not isinstance(row.get(k), str) or not row[k]]
        if missing:
            raise DamagedPart(f"row {i} has no {', '.join(missing)}")
        if not isinstance(row.get("reason", ""), str):
            row["reason"] = str(row["reason"])
    ids = [r["run_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DamagedPart("rows repeat a run_id")
    run_ids, steps = arrays["run_ids"], arrays["steps"]
    if run_ids.ndim != 1 or (run_ids.size and run_ids.dtype.kind != "U"):
        raise DamagedPart("run_ids is not a list of run ids")
    curve_ids = [str(r) for r in run_ids]
    if not set(curve_ids) <= set(ids) or len(set(curve_ids)) != len(curve_ids):
        raise DamagedPart("run_ids do not match the rows")
    if steps.ndim != 1 or steps.dtype.kind not in "iu":
        raise DamagedPart("steps is not a list of steps")
    expected = (len(curve_ids), len(steps))
    names = [k for k in CURVE_ARRAYS if k in arrays]  # sampled_ratio: absent from old parts
    for name in names:
        if arrays[name].shape != expected and (curve_ids or arrays[name].size):
            raise DamagedPart(
                f"{name} has shape {arrays[name].shape}, expected {expected} "
                f"({len(curve_ids)} runs x {len(steps)} evaluations)"
            )
        if arrays[name].dtype.kind != "f":
            raise DamagedPart(f"{name} is not floating point")
    curves = {}
    for i, run_id in enumerate(curve_ids):
        ratio = arrays["ratio"][i]
        sampled = arrays["sampled_ratio"][i] if "sampled_ratio" in arrays else None
        curves[run_id] = Curves(
            steps,
            arrays["accuracy"][i],
            arrays["loss"][i],
            ratio,
            np.full_like(ratio, np.nan) if sampled is None else sampled,
        )
    return rows, curves


def _meta_problem(meta: Any) -> str | None:
    """Why ``meta`` (sweep.json, parsed) cannot be used, or ``None``."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    sessions = meta.get("sessions", [])
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        return "sessions is not a list of objects"
    for key in ("run_ids", "grids"):
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{key} is not a list of strings"
    for key in ("name", "description"):
        if not isinstance(meta.get(key, ""), str):
            return f"{key} is not a string"
    total = meta.get("runs_total", 0)
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        return "runs_total is not a count"
    return None


def _check_runs_csv(path: Path) -> None:
    table = pd.read_csv(path, nrows=None)
    missing = [k for k in REQUIRED_ROW_KEYS if k not in table.columns]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column(s)")


def _check_curves(path: Path) -> None:
    with gzip.open(path, "rb") as fd:
        header = fd.readline().decode().strip().split(",")
        if header[: len(CURVE_COLUMNS)] != CURVE_COLUMNS:
            raise ValueError(f"unexpected columns {header[:6]}")
        while fd.read(1 << 20):  # the whole stream: a truncated or garbled one fails its CRC
            pass


def read_run_table(path: Path) -> pd.DataFrame:
    """``runs.csv`` as a frame: only empty cells are missing (the attack named "nan" stays a
    name), run ids and reasons stay strings."""
    return pd.read_csv(
        path, dtype={"reason": str, "run_id": str}, keep_default_na=False, na_values=[""]
    )


def _python_value(value: Any) -> Any:
    """A ``runs.csv`` cell as the parts hold it: empty cells ``None``, NumPy scalars Python's."""
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _read_curves(path: Path, run_ids: set[str]) -> dict[str, Curves]:
    """The curves of ``curves.csv.gz`` for ``run_ids`` (none when it is missing or unreadable)."""
    try:
        _check_curves(path)
        frame = pd.read_csv(path, dtype={"run_id": str})
    except Exception:
        return {}
    if "sampled_ratio" not in frame.columns:
        frame["sampled_ratio"] = np.nan
    found = {}
    for run_id, group in frame.groupby("run_id", sort=False):
        if run_id not in run_ids:
            continue
        group = group.sort_values("step")
        found[run_id] = Curves(
            steps=group["step"].to_numpy(np.int64),
            **{k: group[k].to_numpy(np.float32) for k in CURVE_ARRAYS},
        )
    return found


def _reason(err: BaseException) -> str:
    """A short reason for ``err``: the exception's type and the first line of its message."""
    text = (str(err).splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _move_aside(path: Path, folder: Path, suffix: str = "") -> Path | None:
    """Move ``path`` into ``folder`` under its own name (plus ``suffix``; ``-1``, ``-2``... if
    taken), never overwriting; ``None`` if it cannot be moved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            target = folder / (path.name + suffix + (f"-{i}" if i else ""))
            if target.exists() or target.is_symlink():
                continue
            try:  # a hard link fails where the target exists: no race overwrites a moved file
                os.link(path, target, follow_symlinks=False)
                path.unlink()
            except OSError as err:
                if err.errno == errno.EEXIST:
                    continue
                if path.is_dir() or err.errno in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    os.rename(path, target)  # folders, and file systems without hard links
                else:
                    raise
            return target
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- #
# Folder checks


def _make_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise _NotWritable(f"{path} is a file, not a folder")
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise _NotWritable(f"{parent} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)


def _os_reason(err: OSError, where: Path) -> str:
    name = errno.errorcode.get(err.errno or 0, type(err).__name__)
    return f"{err.strerror or err} ({name}) at {err.filename or where}"


def _unwritable(root: Path, reason: str) -> str:
    return (
        f"cannot write the sweep's results in {root} ({reason}): give --output DIR with a "
        "folder that can be written"
    )


# ---------------------------------------------------------------------------------------------- #
# The lock


def _read_lock(path: Path) -> dict[str, Any]:
    """The lock's content; ``{}`` if it cannot be read or parsed."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _take_lock(path: Path, mine: dict[str, Any], note: Any) -> None:
    payload = json.dumps(mine, indent=2) + "\n"
    tmp = path.with_name(f".lock.{os.getpid()}.tmp")
    for _ in range(5):
        tmp.write_text(payload)
        try:
            _link_or_create(tmp, path, payload)
            return
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        holder = _read_lock(path)
        if not path.exists():
            continue  # released meanwhile
        live = _holder_alive(holder)
        if live:
            raise ValueError(_held_message(path, holder))
        # stale: move it away under a name of our own, check that it is the lock we read
        aside = path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        taken = _read_lock(aside)
        if taken != holder:  # another sweep took it over meanwhile: put its lock back
            with contextlib.suppress(OSError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            continue
        aside.unlink(missing_ok=True)
        if note is not None:
            note(_stale_note(path, holder))
    raise ValueError(f"cannot take the lock {path}: other sweeps keep taking it; retry")


def _link_or_create(tmp: Path, path: Path, payload: str) -> None:
    """Create ``path`` with ``tmp``'s content, atomically, failing where it exists."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # no hard links here
        with os.fdopen(fd, "w") as out:
            out.write(payload)


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder may still run: its PID alive on this host, or another host."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # unreadable lock: nobody to wait for
    if host not in (None, socket.gethostname()):
        return True  # cannot be checked from here
    return pid != os.getpid() and _alive(str(pid))


def _held_message(path: Path, holder: dict[str, Any]) -> str:
    host = holder.get("host", "?")
    here = host == socket.gethostname()
    since = f" since {holder['started']}" if holder.get("started") else ""
    command = holder.get("command") or "?"
    check = "" if here else " (another host: cannot be checked from here)"
    return (
        f"--output {str(path.parent)!r} is in use by another sweep: PID {holder.get('pid')} on "
        f"{host}{check}{since}, running {command}; wait for it to finish or give another "
        f"--output DIR (if no sweep runs there, remove {path})"
    )


def _stale_note(path: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return f"note: took over the unreadable lock {path} (its holder cannot be known)"
    return (
        f"note: took over the stale lock {path} of PID {holder.get('pid')} "
        f"({holder.get('command') or '?'}), which no longer runs"
    )


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (from a temporary file's name) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
