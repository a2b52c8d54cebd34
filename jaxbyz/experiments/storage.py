"""A sweep's output folder, written so that no finished work is lost.

Each finished batch is one file ``parts/<id>.npz`` written to a temporary name then renamed
(``os.replace``), so a sweep killed at any moment (SIGKILL included) loses at most the batches in
flight, and a rerun skips every run found in ``parts/``. The run table ``runs.csv`` (one row per
run) and the curves ``curves.csv.gz`` (per run and evaluation step: top-1 accuracy, and the mean
loss, variance-norm ratio of the honest submissions and of the sampled gradients over the steps
since the previous evaluation) are rebuilt from the parts; ``sweep.json`` holds the sweep's
metadata and session history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fd:
        fd.write(payload)
        fd.flush()
        os.fsync(fd.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass
class Curves:
    """The curves of one run, one value per evaluation step."""

    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    ratio: np.ndarray
    sampled_ratio: np.ndarray


class Store:
    """A sweep's output folder: ``parts/`` (one file per finished batch), the rebuilt tables."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"

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

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, Curves]]:
        """Every recorded run (a later part supersedes an earlier one for the same run)."""
        rows: dict[str, dict[str, Any]] = {}
        curves: dict[str, Curves] = {}
        for stale in self.parts.glob(".*.tmp"):  # writes cut short by a kill
            if not _alive(stale.suffixes[-2].lstrip(".")):
                stale.unlink(missing_ok=True)
        for path in sorted(self.parts.glob("*.npz")):
            with np.load(path, allow_pickle=False) as part:
                for row in json.loads(str(part["rows"])):
                    rows[row["run_id"]] = row
                    curves.pop(row["run_id"], None)
                # parts written before the sampled ratio was recorded have none
                sampled = part["sampled_ratio"] if "sampled_ratio" in part.files else None
                for i, run_id in enumerate(part["run_ids"]):
                    curves[str(run_id)] = Curves(
                        part["steps"],
                        part["accuracy"][i],
                        part["loss"][i],
                        part["ratio"][i],
                        np.full_like(part["ratio"][i], np.nan) if sampled is None else sampled[i],
                    )
        return rows, curves

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
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(
                columns=["run_id", "step", "accuracy", "loss", "ratio", "sampled_ratio"]
            )
        )
        buffer = io.BytesIO()
        long.to_csv(buffer, index=False, compression={"method": "gzip", "mtime": 0})
        atomic_write_bytes(self.root / "curves.csv.gz", buffer.getvalue())

    def read_meta(self) -> dict[str, Any]:
        path = self.root / "sweep.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(meta, indent=2, default=_json_default) + "\n"
        atomic_write_bytes(self.root / "sweep.json", payload.encode())


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (from a temporary file's name) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
