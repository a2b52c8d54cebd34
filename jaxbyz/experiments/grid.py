"""Sweep grids: presets and TOML files, their expansion into runs, and the runs' programs.

A grid file (TOML, read with ``tomllib``) sets :class:`~jaxbyz.config.Config` fields by name; any
field may be a list, and the grid is the product of all the lists::

    name = "my-grid"
    baseline = true                       # add the unattacked average baseline (see below)
    dataset = "fashion-mnist"
    nb_workers = 51
    nb_decl_byz = [24, 12]                # a list: one axis of the product
    gar = ["krum", "median", "bulyan"]    # Bulyan is dropped where n < 4f + 3
    momentum_at = ["update", "worker"]
    seed = [1, 2, 3, 4, 5]                # ("seeds" is accepted too)
    [[axis.attack]]                       # an axis whose values set several fields together
                                          # (a list inside one expands within it)
    attack = "little"
    attack_args = { factor = 1.5, negative = true }
    [[axis.attack]]
    attack = "empire"
    attack_args = { factor = 1.1 }

``include = ["paper-mnist", ...]`` unites other grids. Optional fields take the string ``"none"``.
Combinations a rule does not admit (``rule.check(n, f)``: Bulyan needs n >= 4f+3, Krum n >= 2f+3,
...) are left out, as the paper's ``reproduce.py`` leaves Bulyan out at the larger f.

The baseline (El-Mhamdi et al., ICLR 2021, Section 4; ``reproduce.py``): for every attacked
setting, the same run with the n - f honest workers only, the average and no attack; its best
accuracy is the reference ``ref`` of the paper's headline statistic.

Runs that differ only in traced hyper-parameters (:class:`jaxbyz.config.HyperParams`: learning
rate, momentum, dampening, regularisation factors, weight decay, attack factor) and seed share
one compiled program (``program_key``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxbyz.config import GATED, TRACED_ATTACK_ARGS, TRACED_FIELDS, Config, identity_dict

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parents[2] / "experiments" / "presets"
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
META_KEYS = ("name", "description", "baseline", "include", "axis", "seeds")
BASELINE_RULE = "average"
BASELINE_ATTACK = "nan"
# (a, b): the rule needs n >= a * f + b; used only where the rule registry lacks the rule
MIN_WORKERS = {
    "median": (0, 1),
    "average": (0, 1),
    "trmean": (2, 1),
    "phocas": (2, 1),
    "meamed": (2, 1),
    "krum": (2, 3),
    "bulyan": (4, 3),
}


# ---------------------------------------------------------------------------------------------- #
# Runs


def config_id(config: Config) -> str:
    """A stable 12-hex-digit identifier of ``config`` (its data folder excluded; fields added
    to ``Config`` later count only when set to another value than their default)."""
    payload = {k: v for k, v in identity_dict(config).items() if k != "data_dir"}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def baseline_config(config: Config) -> Config:
    """The unattacked reference of ``config``: its ``n - f`` honest workers, average, no attack."""
    return config.replace(
        nb_workers=config.nb_honests,
        nb_decl_byz=0,
        nb_real_byz=None,
        gar=BASELINE_RULE,
        gar_args={},
        attack=BASELINE_ATTACK,
        attack_args={},
        momentum_at="update",
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its configuration and its role ("attacked" or "baseline")."""

    config: Config
    role: str = "attacked"

    @property
    def id(self) -> str:
        return config_id(self.config)

    @property
    def pair_id(self) -> str:
        """Shared by the runs that differ only in the momentum placement."""
        return config_id(self.config.replace(momentum_at="*"))

    @property
    def baseline_id(self) -> str:
        return config_id(baseline_config(self.config))

    @property
    def name(self) -> str:
        """A readable name in the paper's style (``fashion-mnist-little-krum-f_12-lr_0.5-...``)."""
        c = self.config
        tail = f"lr_{c.learning_rate}" + ("-nesterov" if c.momentum_nesterov else "")
        if self.role == "baseline":
            return f"{c.dataset}-average-n_{c.nb_workers}-{tail}-s{c.seed}"
        return (
            f"{c.dataset}-{c.attack}-{c.gar}-n_{c.nb_workers}-f_{c.nb_decl_byz}-{tail}"
            f"-at_{c.momentum_at}-s{c.seed}"
        )


def program_key(config: Config) -> str:
    """The static part of ``config``: runs with equal keys compile to one program. The traced
    hyper-parameters (:class:`jaxbyz.config.HyperParams`) and the seed are left out (the seed
    stays when it draws the Dirichlet partition, a host-side array); of the gated ones, only
    whether they are on."""
    payload = identity_dict(config)
    for name in TRACED_FIELDS:
        payload.pop(name, None)
        if name in GATED:
            payload[f"{name}_on"] = bool(getattr(config, name))
    if config.dirichlet_alpha is None:
        payload.pop("seed")
    payload["attack_args"] = {
        k: v for k, v in config.attack_args.items() if k not in TRACED_ATTACK_ARGS
    }
    return json.dumps(payload, sort_keys=True, default=str)


def program_id(config: Config) -> str:
    """A 10-hex-digit identifier of ``config``'s program."""
    return hashlib.sha1(program_key(config).encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class Program:
    """Runs that share every static field, hence one compiled ``jit(vmap(run))``."""

    key: str
    runs: tuple[Run, ...]

    @property
    def id(self) -> str:
        return hashlib.sha1(self.key.encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        c = self.runs[0].config
        if self.runs[0].role == "baseline":
            return f"{c.dataset} average n={c.nb_workers}" + (
                " nesterov" if c.momentum_nesterov else ""
            )
        return (
            f"{c.dataset} {c.gar} vs {c.attack} n={c.nb_workers} f={c.nb_decl_byz} "
            f"at {c.momentum_at}" + (" nesterov" if c.momentum_nesterov else "")
        )


def group_programs(runs: Iterable[Run]) -> list[Program]:
    """Group runs by static key, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(program_key(run.config), []).append(run)
    return [Program(key, tuple(members)) for key, members in groups.items()]


def chunks(runs: tuple[Run, ...] | list[Run], max_batch: int) -> list[list[Run]]:
    """Split ``runs`` into the fewest batches of at most ``max_batch``, of near-equal sizes."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be a positive integer, got {max_batch}")
    count = math.ceil(len(runs) / max_batch)
    size, extra = divmod(len(runs), count) if count else (0, 0)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(runs[start:stop]))
        start = stop
    return out


# ---------------------------------------------------------------------------------------------- #
# Grid files


@dataclasses.dataclass(frozen=True)
class Grid:
    """An expanded grid: its runs (baselines included) and the combinations left out."""

    name: str
    description: str
    runs: tuple[Run, ...]
    left_out: tuple[tuple[Config, str], ...] = ()

    def count(self, role: str | None = None) -> int:
        return sum(1 for r in self.runs if role is None or r.role == role)

    def configurations(self, role: str | None = None) -> int:
        """Distinct configurations, seeds not counted (the paper's "736 configurations")."""
        return len(
            {config_id(r.config.replace(seed=0)) for r in self.runs if role in (None, r.role)}
        )


def preset_names() -> list[str]:
    """The presets shipped in ``experiments/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_spec(source: str | Path) -> dict[str, Any]:
    """The raw grid of a preset name or a TOML file path."""
    path = Path(source)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{source}.toml"
        if not path.exists():
            raise ValueError(
                f"unknown preset {str(source)!r}; presets: {', '.join(preset_names())} "
                "(or give a TOML file with --grid)"
            )
    try:
        with open(path, "rb") as fd:
            spec = tomllib.load(fd)
    except FileNotFoundError:
        raise ValueError(f"--grid {str(source)!r}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--grid {str(source)!r}: invalid TOML: {err}") from None
    spec.setdefault("name", path.stem)
    return spec


def parse_value(text: str) -> Any:
    """A TOML value (``0.5``, ``[0.5, 0.02]``, ``true``, ``{factor = 1.1}``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` or ``"1,2,7"`` (or a mix) into a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, sep, high = part.strip().partition("-")
            seeds.extend(range(int(low), int(high) + 1) if sep else [int(low)])
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected e.g. 1-5 or 1,2,3") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r}: no seed given")
    return seeds


def apply_overrides(spec: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Replace fields of ``spec`` (and of its included grids); an axis keeps the matching values."""
    spec = dict(spec)
    for field, value in overrides.items():
        _check_field(field)
        if field == "seed":
            spec.pop("seeds", None)
        values = value if isinstance(value, list) else [value]
        axes = dict(spec.get("axis", {}))
        for label, tables in axes.items():
            if any(field in t for t in tables):
                kept = [t for t in tables if t.get(field) in values]
                if not kept:
                    raise ValueError(f"--set {field}={value!r} matches no value of axis {label!r}")
                axes[label] = [{k: v for k, v in t.items() if k != field} for t in kept]
        spec["axis"] = axes
        spec[field] = value
    return spec


def load_grid(
    source: str | Path, overrides: Mapping[str, Any] | None = None, check_rules: bool = True
) -> Grid:
    """Read a preset or TOML file, apply ``--set``/``--seeds`` overrides and expand it."""
    spec = read_spec(source)
    return expand(spec, overrides or {}, check_rules=check_rules)


def expand(
    spec: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, check_rules: bool = True
) -> Grid:
    """The runs of a grid spec (a parsed TOML document), baselines and includes resolved."""
    overrides = overrides or {}
    name = str(spec.get("name", "grid"))
    description = str(spec.get("description", ""))
    runs: dict[str, Run] = {}
    left_out: list[tuple[Config, str]] = []
    if "include" in spec:
        extra = set(spec) - {"name", "description", "include"}
        if extra:
            raise ValueError(f"grid {name!r}: a grid with include sets no fields, got {extra}")
        for other in spec["include"]:
            sub = expand(read_spec(other), overrides, check_rules)
            runs.update((r.id, r) for r in sub.runs)
            left_out.extend(sub.left_out)
        return Grid(name, description, tuple(runs.values()), tuple(left_out))
    spec = apply_overrides(spec, overrides)
    for config in _product(spec):
        reason = inadmissible(config) if check_rules else None
        if reason is not None:
            left_out.append((config, reason))
            continue
        attacked = Run(config)
        runs.setdefault(attacked.id, attacked)
    if spec.get("baseline", False):
        for run in list(runs.values()):
            base = Run(baseline_config(run.config), role="baseline")
            runs.setdefault(base.id, base)
    ordered = sorted(runs.values(), key=lambda r: r.role != "baseline")  # stable: baselines first
    return Grid(name, description, tuple(ordered), tuple(left_out))


def _check_field(field: str) -> None:
    if field not in FIELDS:
        raise ValueError(
            f"unknown configuration field {field!r}; fields: {', '.join(FIELDS)} "
            f"(grid keys: {', '.join(META_KEYS)})"
        )


def _coerce(field: str, value: Any) -> Any:
    """TOML values into the Config field's type ("none" -> None, ints -> floats for floats)."""
    kind = str(FIELDS[field].type)
    if isinstance(value, str) and value.lower() == "none" and "None" in kind:
        return None
    if "float" in kind and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _axes(spec: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """Every axis as a list of field assignments (a scalar field is an axis of one value)."""
    axes: list[list[dict[str, Any]]] = []
    for key, value in spec.items():
        if key in META_KEYS:
            continue
        _check_field(key)
        values = value if isinstance(value, list) else [value]
        axes.append([{key: _coerce(key, v)} for v in values])
    if "seeds" in spec and "seed" not in spec:
        axes.append([{"seed": int(s)} for s in spec["seeds"]])
    for label, tables in spec.get("axis", {}).items():
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ValueError(f"axis {label!r} must be an array of tables ([[axis.{label}]])")
        values = [assignment for table in tables for assignment in _table_product(table)]
        axes.append(values or [{}])
    return axes


def _table_product(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The assignments of one axis table; a list in it expands to a product of its own."""
    options = []
    for key, value in table.items():
        _check_field(key)
        values = value if isinstance(value, list) else [value]
        options.append([(key, _coerce(key, v)) for v in values])
    return [dict(choice) for choice in itertools.product(*options)]


def _product(spec: Mapping[str, Any]) -> list[Config]:
    configs = []
    for combination in itertools.product(*_axes(spec)):
        fields: dict[str, Any] = {}
        for assignment in combination:
            fields.update(assignment)
        configs.append(Config(**fields))
    return configs


def inadmissible(config: Config) -> str | None:
    """Why the rule does not admit ``(n, f)`` (its ``check``), or None when it does."""
    try:
        from jaxbyz import aggregators

        rule = aggregators.get(config.gar, **config.gar_args)
    except (AttributeError, ValueError, TypeError):
        rule = None
    if rule is not None:
        try:
            rule.check(config.nb_workers, config.nb_decl_byz)
        except ValueError as err:
            return f"{config.gar}: {err}"
        return None
    a, b = MIN_WORKERS.get(config.gar, (0, 1))
    if config.nb_workers < a * config.nb_decl_byz + b:
        return (
            f"{config.gar} needs n >= {a}f+{b}, got n={config.nb_workers}, f={config.nb_decl_byz}"
        )
    return None
