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

``include = ["paper-mnist", ...]`` unites other grids (presets, or TOML files, relative to the
including file first); a grid with ``include`` sets nothing else. Optional fields take the string
``"none"``. ``--set FIELD=VALUE`` (a TOML value, lists allowed) replaces a field of the grid and of
its included grids (an axis keeps its matching tables); ``--seeds 1-5`` replaces the seeds.
Combinations a rule does not admit (``rule.check(n, f)``: Bulyan needs n >= 4f+3, Krum n >= 2f+3,
...) are left out, as the paper's ``reproduce.py`` leaves Bulyan out at the larger f.

The baseline (El-Mhamdi et al., ICLR 2021, Section 4; ``reproduce.py``): for every attacked
setting, the same run with the n - f honest workers only, the average and no attack; its best
accuracy is the reference ``ref`` of the paper's headline statistic.

Runs that differ only in traced hyper-parameters (:class:`jaxbyz.config.HyperParams`: learning
rate, momentum, dampening, regularisation factors, weight decay, attack factor), seed and
structure choices (the momentum placement, Nesterov, the attack: moment-family coefficients or
a switch, :mod:`jaxbyz.structure`) share one compiled program (``program_key``;
``trace_structure=False`` keeps one program per structure choice); a switch's runs are batched
per attack (:meth:`Program.batches`).

Checks. :func:`load_grid` and :func:`expand` check a grid completely before anything runs (so
does ``--dry-run``), and refuse it with one :class:`GridError` (a ValueError) of one line that
names the file (or ``--set``/``--seeds``), the field, the value and the fix, e.g.
``grid my.toml: gar = "nosuchrule": unknown aggregation rule 'nosuchrule'; known ...``:

- the file: readable, a regular file, valid TOML; ``include`` a non-empty list of presets or
  files that exist, without cycles (``a.toml -> b.toml -> a.toml`` is named) and with no other
  field beside it; a file that sets no configuration field (it would plan the default
  configuration only) is refused;
- the keys: every key a ``Config`` field or a grid key (``name``, ``description``: strings,
  ``name`` usable as a folder name; ``baseline``: true or false; ``seeds``; ``axis``: arrays of
  non-empty tables, ``[[axis.NAME]]``); a field set in two places (the top level and an axis, two
  axes, ``seed`` and ``seeds``) is refused rather than one value silently winning;
- every value, at its place: an empty list or axis (no runs) is refused; its type is the field's
  (``validation.check_types``'s rules: an integer, not a float or a bool, where an integer is due;
  a finite number, not ``nan`` or ``inf``, where a float is; ...); integers within 32 bits; seeds
  within [0, 2**31 - 1], at most :data:`MAX_SEEDS` of them; the product at most
  :data:`MAX_COMBINATIONS` combinations (counted before anything is expanded);
- every configuration of the product: :func:`jaxbyz.validation.check_config` (names of datasets,
  models, losses, attacks and optimisers, their arguments, ranges, f < n, ...). It is called on
  *probes*, not on every run: ``check_config``'s checks relate only the fields within each of
  :data:`GROUPS` (a field outside them is checked alone), so each distinct value of each group
  (over the product of the axes it touches) is checked once, the groups' values zipped into
  ``max(distinct values of a group)`` probes (the paper's 3680 runs: about 20 calls). Its
  flag-named messages are reworded to name the grid file and the field. The rule
  (``gar``/``gar_args``/``gars``) is built once per distinct value (an unknown rule or bad
  arguments are errors) and ``rule.check(n, f)`` decides what is left out; a grid whose every
  combination is left out is refused; the baselines are checked too;
- ``--set``: a known field, a value (``nb_steps=`` and malformed TOML are refused), checked as a
  grid value; ``--seeds``: integers or ranges within [0, 2**31 - 1], at most :data:`MAX_SEEDS`,
  counted before any list is built.

``load_grid(..., check=False)`` skips the value and configuration checks (the runner then records
a bad run as an error): for tests of the runner only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from jaxbyz import structure
from jaxbyz.config import (
    DEFAULTS,
    FIELD_TYPES,
    GATED,
    TRACED_ATTACK_ARGS,
    TRACED_FIELDS,
    Config,
    identity_dict,
    parse_keyval,
)
from jaxbyz.validation import rule_admits, type_ok

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


_IDS: dict[str, str] = {}  # repr(config) -> config_id(config): equal reprs, equal fields


def config_id(config: Config) -> str:
    """A stable 12-hex-digit identifier of ``config`` (its data folder excluded; fields added
    to ``Config`` later count only when set to another value than their default)."""
    key = repr(config)
    cached = _IDS.get(key)
    if cached is None:
        payload = {k: v for k, v in identity_dict(config).items() if k != "data_dir"}
        text = json.dumps(payload, sort_keys=True, default=str)
        cached = hashlib.sha1(text.encode()).hexdigest()[:12]
        if len(_IDS) >= 1 << 17:
            _IDS.clear()
        _IDS[key] = cached
    return cached


def baseline_config(config: Config) -> Config:
    """The unattacked reference of ``config``: its ``n - f`` honest workers, average, no attack
    (with partial participation, ``min(M, n - f)`` of them each round)."""
    participants = config.clients_per_round
    if participants is not None and participants >= config.nb_honests:
        participants = None
    return config.replace(
        clients_per_round=participants,
        round_decl_byz=None,
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

    @functools.cached_property
    def id(self) -> str:
        return config_id(self.config)

    @functools.cached_property
    def pair_id(self) -> str:
        """Shared by the runs that differ only in the momentum placement."""
        return config_id(self.config.replace(momentum_at="*"))

    @functools.cached_property
    def baseline_id(self) -> str:
        return config_id(baseline_config(self.config))

    @property
    def name(self) -> str:
        """A readable name in the paper's style (``fashion-mnist-little-krum-f_12-lr_0.5-...``),
        with the federated or graph setting where there is one (``-K_5-M_17``,
        ``-torus:4x4-gossip-byz_2``)."""
        c = self.config
        tail = f"lr_{c.learning_rate}" + ("-nesterov" if c.momentum_nesterov else "")
        tail += setting_tag(c)
        if self.role == "baseline":
            return f"{c.dataset}-average-n_{c.nb_workers}-{tail}-s{c.seed}"
        return (
            f"{c.dataset}-{c.attack}-{c.gar}-n_{c.nb_workers}-f_{c.nb_decl_byz}-{tail}"
            f"-at_{c.momentum_at}-s{c.seed}"
        )


def setting_tag(config: Config) -> str:
    """``-K_5-M_17`` for federated rounds, ``-torus:4x4-gossip-byz_2`` on a graph, else ``""``."""
    c = config
    tag = f"-K_{c.nb_local_steps}" if c.nb_local_steps != 1 else ""
    tag += f"-M_{c.clients_per_round}" if c.clients_per_round is not None else ""
    if c.topology is not None:
        tag += f"-{c.topology}-{c.mixing}-byz_{c.f_real}"
    return tag


def program_key(config: Config, trace_structure: bool = True) -> str:
    """The static part of ``config`` (:func:`_static_fields`) as JSON: runs with equal keys
    compile to one program."""
    return json.dumps(_static_fields(config, trace_structure), sort_keys=True, default=str)


def _static_fields(config: Config, trace_structure: bool) -> dict[str, Any]:
    """The static fields of ``config``, those its program is compiled for. The traced
    hyper-parameters (:class:`jaxbyz.config.HyperParams`) and the seed are left out (the seed
    stays when it draws the honest workers' partition, ``--partition``, or the server's root set,
    host-side arrays); of the gated ones, only whether they are on. With ``trace_structure``,
    so are the structure choices ``config`` can take as traced values (the placement, Nesterov,
    an attack on the submitted vectors: :mod:`jaxbyz.structure`)."""
    from jaxbyz.data import partition_uses_seed

    payload = identity_dict(config)
    if trace_structure:
        _mark_traced(payload, structure.traceable(config))
    for name in TRACED_FIELDS:
        payload.pop(name, None)
        if name in GATED:
            payload[f"{name}_on"] = bool(getattr(config, name))
    if not (
        partition_uses_seed(config.partition, config.dirichlet_alpha)
        or _reads_root_set(config)
        or config.topology is not None  # the seed draws the Byzantine nodes (and the graph)
    ):
        payload.pop("seed")
    if "attack_args" in payload:
        payload["attack_args"] = {
            k: v for k, v in config.attack_args.items() if k not in TRACED_ATTACK_ARGS
        }
    return payload


def _mark_traced(payload: dict[str, Any], traced: structure.Traced) -> None:
    """Replace in ``payload`` the fields of each structure choice ``traced`` takes as a traced
    value by a ``traced_<choice>`` marker."""
    for choice, fields in structure.FIELDS.items():
        if getattr(traced, choice) or (choice == "attack" and traced.switch):
            for name in fields:
                payload.pop(name, None)
            payload[f"traced_{choice}"] = True


def _reads_root_set(config: Config) -> bool:
    """Whether the rule reads the server's gradient on a root set drawn from the seed (FLTrust);
    False for a configuration whose rule cannot be built (it fails on its own)."""
    from jaxbyz import aggregators

    try:
        if config.gars is not None:
            return aggregators.from_gars(config.gars).needs_reference
        return aggregators.get(config.gar, **config.gar_args).needs_reference
    except (ValueError, TypeError):
        return False


@dataclasses.dataclass(frozen=True)
class Program:
    """Runs that share every static field, hence one compiled ``jit(vmap(run))``."""

    key: str
    runs: tuple[Run, ...]

    @functools.cached_property
    def id(self) -> str:
        """A 10-hex-digit identifier of the compiled program: its static key and the structure
        choices it traces, with a switch's branches. Runs recorded with equal ids and equal
        ``runs_in_batch`` ran the same executable (on one machine and jax version, equal bit for
        bit); a run recorded under another id, for example alone in a ``--dedicated-programs``
        sweep after sharing a switch, rounds differently (see the README's "Reproducibility")."""
        identity = _static_fields(self.runs[0].config, trace_structure=False)
        _mark_traced(identity, self.traced)
        if self.traced.switch:
            identity["switch"] = list(self.traced.switch)
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    @functools.cached_property
    def traced(self) -> structure.Traced:
        """The structure choices its runs differ in, traced values of the program (computed
        once: each run's batch and branch read it)."""
        return structure.varying([r.config for r in self.runs])

    @property
    def label(self) -> str:
        configs = [r.config for r in self.runs]
        c = configs[0]

        def values(field: str) -> str:
            return "|".join(dict.fromkeys(str(getattr(x, field)) for x in configs))

        nesterov = {x.momentum_nesterov for x in configs}
        tail = {frozenset({True}): " nesterov", frozenset({False}): ""}.get(
            frozenset(nesterov), " nesterov|plain"
        )
        tail += setting_tag(c).replace("-", " ")
        if self.runs[0].role == "baseline":
            return f"{c.dataset} average n={c.nb_workers}{tail}"
        switch = self.traced.switch
        attacks = f"{len(switch)} attacks" if switch else values("attack")
        return (
            f"{c.dataset} {c.gar} vs {attacks} n={c.nb_workers} f={c.nb_decl_byz} "
            f"at {values('momentum_at')}{tail}"
        )

    def batches(self, max_batch: int) -> list[list[Run]]:
        """The runs in batches of at most ``max_batch`` (:func:`chunks`); with an attack switch,
        each attack's runs apart, since the runs of a batch share the switch's branch."""
        switch = self.traced.switch
        if not switch:
            return chunks(self.runs, max_batch)
        by_branch: dict[str, list[Run]] = {spec: [] for spec in switch}
        for run in self.runs:
            by_branch[structure.attack_spec(run.config)].append(run)
        return [batch for runs in by_branch.values() for batch in chunks(runs, max_batch)]

    def branch(self, run: Run) -> int:
        """The index of ``run``'s attack among the program's switch branches (0 without one)."""
        switch = self.traced.switch
        return switch.index(structure.attack_spec(run.config)) if switch else 0


def group_programs(runs: Iterable[Run], trace_structure: bool = True) -> list[Program]:
    """Group runs by static key (:func:`program_key`), in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(program_key(run.config, trace_structure), []).append(run)
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


class GridError(ValueError):
    """A grid, ``--set`` or ``--seeds`` refused: one line naming the file (or the option), the
    field, the value and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


MAX_SEEDS = 10_000  # seeds of one grid (or --seeds)
MAX_COMBINATIONS = 100_000  # combinations of one grid file's product, left-out ones included
SEED_MAX = 2**31 - 1  # seeds: integers in [0, SEED_MAX]
INT_MAX = 2**31 - 1  # any integer field: |value| <= INT_MAX (a 32-bit integer)
MAX_FILE_BYTES = 1 << 20
# check_config relates the fields within each group (a rule's arguments to its name, f to n, the
# attack to both, the model to the dataset, ...); every other field is checked on its own, except
# the rule (gar, gar_args, gars: built here, its check(n, f) decides what is left out) and the
# seed (checked here, more strictly). A new cross-field check in check_config needs its fields
# grouped here.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("dataset", "model", "model_args"),
    ("init_multi", "init_multi_args"),
    ("init_mono", "init_mono_args"),
    ("loss", "loss_args"),
    ("criterion", "criterion_args"),
    ("learning_rate", "learning_rate_schedule"),
    ("server_optimizer", "server_optimizer_args"),
    (
        "nb_workers", "nb_decl_byz", "nb_real_byz", "attack", "attack_args", "clients_per_round",
        "round_decl_byz", "nb_local_steps", "topology", "mixing", "mixing_args", "momentum_at",
        "momentum_nesterov",
    ),
)  # fmt: skip
RULE_FIELDS = ("gar", "gar_args", "gars")
_KINDS = {
    int: "an integer",
    float: "a finite number",
    str: "a string",
    bool: "true or false",
    dict: "a table of key = value pairs",
}
_FLAG_FIELDS = {
    f.metadata.get("flag", "--" + name.replace("_", "-")): name for name, f in FIELDS.items()
}
_FLAG = re.compile(r"--[a-z0-9]+(?:-[a-z0-9]+)*")
_ARGS = {name[: -len("_args")]: name for name in FIELDS if name.endswith("_args")}
_SAFE_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


class _Unparsed(str):
    """A ``--set`` value that is not a TOML value, kept as the text given (``error``: why)."""

    error = ""


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where values come from: ``label`` names the file ("grid my.toml", "preset paper"); the
    fields in ``overrides`` come from ``--set`` instead."""

    label: str
    path: Path | None = None
    overrides: frozenset[str] = frozenset()
    short: str = ""

    def head(self, field: str, value: Any, spec: Mapping[str, Any] | None = None) -> str:
        """``"grid my.toml: gar = "x""`` (with its axis when found in ``spec``) or
        ``"--set gar=x"``: the start of an error line."""
        if field in self.overrides:
            return f"--set {field}={_toml(value, compact=True)}"
        where = _axis_of(spec, field, value) if spec is not None else ""
        return f"{self.label}: {field} = {_toml(value)}{where}"


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")


def _toml(value: Any, compact: bool = False) -> str:
    """``value`` written as in a TOML file (``"krum"``, ``nan``, ``{factor = 1.5}``), shortened."""
    text = _toml_text(value, compact, 0)
    return text if len(text) <= 160 else text[:150] + "...(cut)"


def _toml_text(value: Any, compact: bool, depth: int) -> str:
    if depth > 8:
        return "..."
    if isinstance(value, _Unparsed):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than int -> str allows
            return "<an integer of more than 4300 digits>"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return '"none"'
    sep, eq = (",", "=") if compact else (", ", " = ")
    if isinstance(value, (list, tuple)):
        items = (_toml_text(v, compact, depth + 1) for v in itertools.islice(value, 40))
        return "[" + sep.join(items) + (sep + "..." if len(value) > 40 else "") + "]"
    if isinstance(value, dict):
        items = []
        for k, v in itertools.islice(value.items(), 40):
            key = k if isinstance(k, str) and _BARE_KEY.match(k) else json.dumps(str(k))
            items.append(f"{key}{eq}{_toml_text(v, compact, depth + 1)}")
        return "{" + (sep.join(items) if compact else f" {sep.join(items)} " if items else "") + "}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return repr(value)


def _got(value: Any) -> str:
    """What ``value`` is, in TOML's words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else _toml(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if hasattr(value, "isoformat"):
        return "a date or time"
    return type(value).__name__


def _axis_of(spec: Mapping[str, Any], field: str, value: Any) -> str:
    """`` (in [[axis.NAME]] #i)`` when ``field = value`` comes from an axis table of ``spec``."""
    axes = spec.get("axis")
    if field in spec or not isinstance(axes, dict):
        return ""
    for label, tables in axes.items():
        for i, table in enumerate(tables if isinstance(tables, list) else []):
            if isinstance(table, dict) and field in table:
                values = table[field] if isinstance(table[field], list) else [table[field]]
                if repr(table[field]) == repr(value) or any(
                    repr(_coerce(field, v)) == repr(value) for v in values
                ):
                    return f" (in [[axis.{label}]] #{i + 1})"
    return ""


# ---------------------------------------------------------------------------------------------- #
# Reading


def preset_names() -> list[str]:
    """The presets shipped in ``experiments/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _resolve(source: Any, base: Path | None, head: str | None) -> tuple[Path, str, str]:
    """The file of a preset name or TOML path (relative to ``base`` first when given), its
    label and its short name; ``head`` starts the error line (None: the command line's)."""
    text = "" if source is None else str(source)
    at = head or f"--grid {text!r}"
    if not text.strip():
        raise GridError(f"{at}: no grid given; give a preset name or a TOML file")
    path = Path(text)
    if base is not None and not path.is_absolute() and (base / path).exists():
        path = base / path
    if not path.suffix and not path.exists():
        preset = PRESET_DIR / f"{text}.toml"
        if "/" in text or "\\" in text or not preset.is_file():
            raise GridError(
                f"{head + ': ' if head else ''}unknown preset {text!r}; presets: "
                f"{', '.join(preset_names())} (or give a TOML file"
                f"{' path' if head else ' with --grid'})"
            )
        return preset, f"preset {text}", text
    return path, f"grid {path if head else text}", path.name


def _read(path: Path, label: str, head: str | None) -> dict[str, Any]:
    """The parsed TOML document at ``path``; errors name ``head`` (else ``--grid PATH``)."""
    at = head or f"--grid {str(path)!r}"
    try:
        if path.is_dir():
            raise GridError(f"{at}: is a folder, not a TOML file")
        if not path.is_file() and path.exists():
            raise GridError(f"{at}: not a regular file")
        if path.exists() and path.stat().st_size > MAX_FILE_BYTES:
            raise GridError(f"{at}: larger than {MAX_FILE_BYTES} bytes; a grid is a short file")
        with open(path, "rb") as fd:
            return tomllib.load(fd)
    except FileNotFoundError:
        raise GridError(f"{at}: no such file") from None
    except OSError as err:
        raise GridError(f"{at}: cannot be read ({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{at}: invalid TOML: {err}") from None
    except RecursionError:
        raise GridError(f"{at}: invalid TOML: nested too deeply") from None


def read_spec(source: str | Path) -> dict[str, Any]:
    """The raw grid of a preset name or a TOML file path (its ``name`` defaults to the file's)."""
    path, label, _ = _resolve(source, None, None)
    spec = _read(path, label, None)
    spec.setdefault("name", path.stem)
    return spec


def parse_value(text: str) -> Any:
    """A TOML value (``0.5``, ``[0.5, 0.02]``, ``true``, ``{factor = 1.1}``) or a bare string
    (kept as typed; the checks say when it was meant as a TOML value and is malformed)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError) as err:
        unparsed = _Unparsed(text)
        unparsed.error = str(err) if isinstance(err, tomllib.TOMLDecodeError) else "too deep"
        return unparsed


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` or ``"1,2,7"`` (or a mix) into a list of seeds: integers in [0, 2**31 - 1],
    at most :data:`MAX_SEEDS`, each once; counted before any list is built."""
    at = f"--seeds {text!r}"
    expected = f"expected e.g. 1-5 or 1,2,7 (integers from 0 to {SEED_MAX})"
    bounds: list[tuple[int, int]] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise GridError(
                f"{at}: {part.strip()!r} is not a seed or a range; {expected}"
            ) from None
        for seed in (first, last):
            if not 0 <= seed <= SEED_MAX:
                raise GridError(f"{at}: seed {seed} is out of range; {expected}")
        if last < first:
            raise GridError(
                f"{at}: {part.strip()!r} is an empty range; write LOW-HIGH, LOW <= HIGH"
            )
        bounds.append((first, last))
    total = sum(last - first + 1 for first, last in bounds)
    if total > MAX_SEEDS:
        raise GridError(
            f"{at}: {total} seeds; at most {MAX_SEEDS} in a sweep; fix: fewer seeds, e.g. "
            "--seeds 1-5"
        )
    seeds = [s for first, last in bounds for s in range(first, last + 1)]
    seen: set[int] = set()
    for seed in seeds:
        if seed in seen:
            raise GridError(f"{at}: seed {seed} is given twice; give each seed once")
        seen.add(seed)
    return seeds


# ---------------------------------------------------------------------------------------------- #
# Values


def _unknown_field(field: Any) -> str:
    """Why ``field`` is not a key of a grid, with the likely one."""
    if field == "seeds":
        return "'seeds' is a grid-file key; on the command line use --seeds 1-5"
    if field in META_KEYS:
        return f"{field!r} is a grid-file key, not a configuration field; set it in the grid file"
    close = difflib.get_close_matches(str(field), [*FIELDS, *META_KEYS], n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else f"fields: {', '.join(FIELDS)}; grid keys: {', '.join(META_KEYS)}"
    )
    return f"unknown configuration field {field!r}; {hint}"


def _check_field(field: str) -> None:
    if field not in FIELDS:
        raise GridError(f"--set {field}: {_unknown_field(field)}")


@functools.cache
def _kinds(field: str) -> tuple[tuple[type, ...], bool]:
    """The types a field takes (as ``validation.check_types`` reads its annotation) and
    whether it is optional."""
    annotation = FIELD_TYPES[field]
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is Union
    members = typing.get_args(annotation) if union else (annotation,)
    kinds = [typing.get_origin(k) or k for k in members]
    return tuple(k for k in kinds if k is not type(None)), type(None) in kinds


@functools.cache
def _example_value(field: str) -> Any:
    kinds, _ = _kinds(field)
    if dict in kinds:
        found = re.search(r"e\.g\. ((?:\S+:\S+ ?)+)", FIELDS[field].metadata.get("help", ""))
        try:
            return parse_keyval(found.group(1).split(), field) if found else {}
        except ValueError:
            return {}
    default = getattr(DEFAULTS, field)
    if default is not None:
        return default
    return {int: 1, float: 1.0}.get(kinds[0]) if kinds else None


def _example(field: str, source: _Source) -> str:
    value = _example_value(field)
    if value is None:
        return ""
    if field in source.overrides:
        return f"; e.g. --set {field}={_toml(value, compact=True)}"
    return f"; e.g. {field} = {_toml(value)}"


def _coerce(field: str, value: Any) -> Any:
    """TOML values into the Config field's type ("none" -> None, ints -> floats for floats)."""
    kinds, optional = _kinds(field)
    if isinstance(value, str) and value.lower() == "none" and optional:
        return None
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value  # refused by _value: not a finite number
    return value


def _value(source: _Source, field: str, raw: Any, spec: Mapping[str, Any] | None) -> Any:
    """``raw`` (one value of ``field``) coerced, its type and range checked."""
    value = _coerce(field, raw)
    kinds, optional = _kinds(field)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        raise GridError(
            f"{source.head(field, raw, spec)}: too large for a number (a float holds at most "
            f"about 1.8e308){_example(field, source)}"
        )
    if not ((value is None and optional) or any(type_ok(k, value) for k in kinds)):
        need = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        need += ' or "none"' if optional else ""
        hint = " (a list inside a list is not an axis)" if isinstance(raw, list) else ""
        if isinstance(raw, _Unparsed):
            hint = " (--set takes TOML values: numbers, true/false, [lists], {tables}, strings)"
        raise GridError(
            f"{source.head(field, raw, spec)}: must be {need}, got {_got(raw)}"
            f"{_example(field, source)}{hint}"
        )
    if field == "seed" and value is not None and not 0 <= value <= SEED_MAX:
        raise GridError(
            f"{source.head(field, raw, spec)}: seeds of a grid are integers from 0 to "
            f"{SEED_MAX} (a negative seed, drawn at random, cannot be resumed); e.g. seed = [1, 2]"
        )
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        raise GridError(
            f"{source.head(field, raw, spec)}: out of range; integers are 32-bit, at most "
            f"{INT_MAX} in absolute value{_example(field, source)}"
        )
    return value


def _values(source: _Source, field: str, value: Any, spec: Mapping[str, Any] | None) -> list:
    """The values of a field (a list is an axis), each checked."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise GridError(
            f"{source.head(field, value, spec)}: an empty list means no runs; give at least one "
            f"value{_example(field, source)}"
        )
    if field == "seed" and len(values) > MAX_SEEDS:
        raise GridError(
            f"{source.head(field, value, spec)}: {len(values)} seeds; at most {MAX_SEEDS} in a "
            "sweep; fix: fewer seeds"
        )
    return [_value(source, field, v, spec) for v in values]


def _check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``--set``/``--seeds`` overrides checked as grid values (a known field, a value)."""
    for field, value in overrides.items():
        if not isinstance(field, str) or field not in FIELDS:
            raise GridError(f"--set {field}={_toml(value, True)}: {_unknown_field(field)}")
        if isinstance(value, _Unparsed) and not value.strip():
            raise GridError(
                f"--set {field}=: no value after '='{_example(field, _Source('', None, {field}))}"
            )
        if isinstance(value, _Unparsed) and value.strip()[:1] in "[{\"'":
            raise GridError(
                f"--set {field}={value}: not a TOML value ({value.error}); quote strings, "
                "e.g. --set learning_rate=[0.5,0.02] or --set 'attack_args={factor=1.5}'"
            )
        _values(_Source("--set", None, frozenset({field})), field, value, None)
    return dict(overrides)


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
                    found = ", ".join(_toml(t[field]) for t in tables if field in t)
                    raise GridError(
                        f"--set {field}={_toml(value, compact=True)}: matches no value of axis "
                        f"{label!r} of grid {spec.get('name', '')!r} ({field}: {found}); give one "
                        "of these or drop the --set"
                    )
                axes[label] = [{k: v for k, v in t.items() if k != field} for t in kept]
        spec["axis"] = axes
        spec[field] = value
    return spec


# ---------------------------------------------------------------------------------------------- #
# Expansion


def load_grid(
    source: str | Path,
    overrides: Mapping[str, Any] | None = None,
    check_rules: bool = True,
    check: bool = True,
) -> Grid:
    """Read a preset or TOML file, apply ``--set``/``--seeds`` overrides, check and expand it.

    Raises :class:`GridError` (a ValueError, one line) on anything wrong (see the module's
    "Checks"); ``check_rules=False`` leaves no combination out; ``check=False`` skips the value
    and configuration checks (tests of the runner's error handling only)."""
    overrides = _check_overrides(overrides or {}) if check else dict(overrides or {})
    path, label, short = _resolve(source, None, None)
    spec = _read(path, label, None)
    spec.setdefault("name", path.stem)
    src = _Source(label, path, frozenset(overrides), short)
    return _expand(spec, src, overrides, check_rules, check, ())


def expand(
    spec: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    check_rules: bool = True,
    check: bool = True,
) -> Grid:
    """The runs of a grid spec (a parsed TOML document), baselines and includes resolved,
    checked as :func:`load_grid` checks a file."""
    overrides = _check_overrides(overrides or {}) if check else dict(overrides or {})
    name = spec.get("name", "grid")
    src = _Source(f"grid {name}", None, frozenset(overrides), str(name))
    return _expand(spec, src, overrides, check_rules, check, ())


def _expand(
    spec: Mapping[str, Any],
    src: _Source,
    overrides: Mapping[str, Any],
    check_rules: bool,
    check: bool,
    chain: tuple[tuple[Path | None, str], ...],
) -> Grid:
    """Check and expand one grid document (``chain``: the including grids, for cycles)."""
    name, description = _check_meta(spec, src)
    if "include" in spec:
        return _expand_includes(spec, src, overrides, check_rules, check, chain, name, description)
    _check_keys(spec, src)
    spec = apply_overrides(dict(spec), overrides)
    axes = _axes(spec, src, check)
    rules: dict[str, Any] = {}
    if check:
        _check_configurations(axes, spec, src)
        rules = _check_rules(axes, spec, src)
    runs: dict[str, Run] = {}
    left_out: list[tuple[Config, str]] = []
    reasons: dict[str, str | None] = {}
    for combination in itertools.product(*axes):
        fields: dict[str, Any] = {}
        for assignment in combination:
            fields.update(assignment)
        config = Config(**fields)
        reason = None
        if check_rules:
            key = repr(
                tuple(getattr(config, f) for f in (*RULE_FIELDS, "nb_workers", "nb_decl_byz"))
            )
            if key not in reasons:
                reasons[key] = _admits(config, rules) if check else inadmissible(config)
            reason = reasons[key]
        if reason is not None:
            left_out.append((config, reason))
            continue
        attacked = Run(config)
        runs.setdefault(attacked.id, attacked)
    if not runs:
        raise GridError(
            f"{src.label}: every combination is left out by its rule's constraints "
            f"({left_out[0][1]}); no run is left; fix: add workers, declare fewer Byzantine "
            "workers or choose other rules"
        )
    if spec.get("baseline", False):
        seen: set[str] = set()
        bases = []
        for run in list(runs.values()):
            config = baseline_config(run.config)
            key = repr(config)
            if key not in seen:
                seen.add(key)
                bases.append(config)
        if check:
            _check_baselines(bases, src)
        for config in bases:
            base = Run(config, role="baseline")
            runs.setdefault(base.id, base)
    ordered = sorted(runs.values(), key=lambda r: r.role != "baseline")  # stable: baselines first
    return Grid(name, description, tuple(ordered), tuple(left_out))


def _check_meta(spec: Mapping[str, Any], src: _Source) -> tuple[str, str]:
    """The grid keys' types: ``name`` (a folder name), ``description``, ``baseline``."""
    name = spec.get("name", "grid")
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name.strip() in ("", ".", ".."):
        raise GridError(
            f"{src.label}: name = {_toml(name)}: the grid's name names its result folder: a "
            'non-empty string without / or \\; e.g. name = "my-grid"'
        )
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise GridError(
            f"{src.label}: description = {_toml(description)}: must be a string, got "
            f'{_got(description)}; e.g. description = "krum against little"'
        )
    if not isinstance(spec.get("baseline", False), bool):
        raise GridError(
            f"{src.label}: baseline = {_toml(spec['baseline'])}: must be true or false, got "
            f"{_got(spec['baseline'])}; e.g. baseline = true"
        )
    return name, description


def _expand_includes(
    spec: Mapping[str, Any],
    src: _Source,
    overrides: Mapping[str, Any],
    check_rules: bool,
    check: bool,
    chain: tuple[tuple[Path | None, str], ...],
    name: str,
    description: str,
) -> Grid:
    """The union of the included grids; cycles, unknown presets and missing files refused."""
    entries = spec["include"]
    if isinstance(entries, str):
        entries = [entries]
    head = f"{src.label}: include = {_toml(spec['include'])}"
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise GridError(
            f'{head}: must be a list of preset names or TOML files, e.g. include = ["smoke"]'
        )
    if not entries:
        raise GridError(f'{head}: an empty list means no runs; e.g. include = ["smoke"]')
    extra = sorted(set(spec) - {"name", "description", "include"})
    if extra:
        raise GridError(
            f"{head}: a grid with include sets nothing else, got {', '.join(extra)}; set them in "
            "the included grids (or with --set)"
        )
    here = (src.path.resolve() if src.path else None, src.short or name)
    chain = (*chain, here)
    runs: dict[str, Run] = {}
    left_out: list[tuple[Config, str]] = []
    for entry in entries:
        at = f"{src.label}: include = {_toml(entry)}"
        path, label, short = _resolve(entry, src.path.parent if src.path else None, at)
        resolved = path.resolve()
        for i, (other, _) in enumerate(chain):
            if other == resolved:
                cycle = " -> ".join([*(n for _, n in chain[i:]), short])
                raise GridError(f"{at}: include cycle {cycle}; remove one of these includes")
        sub_spec = _read(path, label, at)
        sub_spec.setdefault("name", path.stem)
        sub_src = _Source(label, path, src.overrides, short)
        sub = _expand(sub_spec, sub_src, overrides, check_rules, check, chain)
        runs.update((r.id, r) for r in sub.runs)
        left_out.extend(sub.left_out)
    return Grid(name, description, tuple(runs.values()), tuple(left_out))


def _check_keys(spec: Mapping[str, Any], src: _Source) -> None:
    """Known keys, well-formed axes and seeds, each field set in one place, not an empty file."""
    for key, value in spec.items():
        if key not in FIELDS and key not in META_KEYS:
            raise GridError(f"{src.label}: {key} = {_toml(value)}: {_unknown_field(key)}")
    if not any(key in FIELDS and key != "seed" for key in spec) and not spec.get("axis"):
        raise GridError(
            f"{src.label}: sets no configuration field, so it would plan only the default "
            'configuration; set the fields to sweep, e.g. dataset = "mnist" and '
            'gar = ["krum", "median"]'
        )
    if "seeds" in spec:
        if "seed" in spec:
            raise GridError(
                f"{src.label}: seeds = {_toml(spec['seeds'])}: seed is set too; give one of them"
            )
        if not isinstance(spec["seeds"], (int, list)) or isinstance(spec["seeds"], bool):
            raise GridError(
                f"{src.label}: seeds = {_toml(spec['seeds'])}: must be a list of integers, got "
                f"{_got(spec['seeds'])}; e.g. seeds = [1, 2, 3]"
            )
        if isinstance(spec["seeds"], list) and len(spec["seeds"]) > MAX_SEEDS:
            raise GridError(
                f"{src.label}: seeds = {_toml(spec['seeds'])}: {len(spec['seeds'])} seeds; at "
                f"most {MAX_SEEDS} in a sweep; fix: fewer seeds"
            )
    axes = spec.get("axis", {})
    if not isinstance(axes, dict):
        raise GridError(
            f"{src.label}: axis = {_toml(axes)}: must be arrays of tables, [[axis.NAME]] "
            "followed by the fields each value sets"
        )
    where: dict[str, str] = {k: "at the top level" for k in spec if k in FIELDS}
    if "seeds" in spec:
        where["seed"] = "by seeds"
    for label, tables in axes.items():
        at = f"{src.label}: axis.{label}"
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise GridError(
                f"{at} = {_toml(tables)}: must be an array of tables: [[axis.{label}]] followed "
                "by the fields each value sets, once per value"
            )
        if not tables:
            raise GridError(
                f"{at} = []: an empty axis means no runs; give it [[axis.{label}]] tables"
            )
        for i, table in enumerate(tables):
            if not table:
                raise GridError(
                    f"{at} #{i + 1}: sets no field; each [[axis.{label}]] table sets the fields "
                    "of one value of the axis (write a default value explicitly)"
                )
            for key, value in table.items():
                if key not in FIELDS:
                    raise GridError(f"{at} #{i + 1}: {key} = {_toml(value)}: {_unknown_field(key)}")
                first = where.setdefault(key, f"in [[axis.{label}]]")
                if first != f"in [[axis.{label}]]":
                    raise GridError(
                        f"{at} #{i + 1}: {key} = {_toml(value)}: {key} is also set {first}; set "
                        "it in one place (a value in an axis would silently replace it)"
                    )


def _axes(spec: Mapping[str, Any], src: _Source, check: bool) -> list[list[dict[str, Any]]]:
    """Every axis as a list of field assignments (a scalar field is an axis of one value),
    values checked; the size of the product is checked before any is built."""
    sized: list[tuple[str, Any]] = []
    for key, value in spec.items():
        if key in FIELDS:
            sized.append((key, value))
    if "seeds" in spec and "seed" not in spec:
        sized.append(("seed", spec["seeds"]))
    sizes = [(key, len(v) if isinstance(v, list) else 1) for key, v in sized]
    for label, tables in spec.get("axis", {}).items():
        count = sum(
            math.prod(len(v) if isinstance(v, list) else 1 for v in t.values()) for t in tables
        )
        sizes.append((f"axis.{label}", count))
    total = math.prod(size for _, size in sizes)
    if total > MAX_COMBINATIONS:
        factors = " x ".join(f"{size} {key}" for key, size in sizes if size > 1)
        raise GridError(
            f"{src.label}: its product has {total} combinations ({factors}); at most "
            f"{MAX_COMBINATIONS} in one grid; fix: shorten its lists or split the grid"
        )
    axes: list[list[dict[str, Any]]] = []
    for key, value in sized:
        if check:
            values = _values(src, key, value, spec)
        else:
            values = [_coerce(key, v) for v in (value if isinstance(value, list) else [value])]
        axes.append([{key: v} for v in values])
    for tables in spec.get("axis", {}).values():
        values = [assignment for t in tables for assignment in _table_product(t, src, spec, check)]
        axes.append(values or [{}])
    if not all(axes):
        raise GridError(f"{src.label}: an empty list means no runs; give at least one value")
    return axes


def _table_product(
    table: Mapping[str, Any], src: _Source, spec: Mapping[str, Any], check: bool
) -> list[dict[str, Any]]:
    """The assignments of one axis table; a list in it expands to a product of its own."""
    options = []
    for key, value in table.items():
        if check:
            values = _values(src, key, value, spec)
        else:
            values = [_coerce(key, v) for v in (value if isinstance(value, list) else [value])]
        options.append([(key, v) for v in values])
    return [dict(choice) for choice in itertools.product(*options)]


# ---------------------------------------------------------------------------------------------- #
# Configuration checks


def _distinct(axes: list[list[dict[str, Any]]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The distinct assignments of ``fields`` over the product of ``axes`` (only the axes that
    set one of them, each reduced to its distinct values), in product order."""
    touching = []
    for axis in axes:
        reduced = {}
        for assignment in axis:
            part = {f: assignment[f] for f in fields if f in assignment}
            reduced.setdefault(repr(part), part)
        if any(reduced.values()):
            touching.append(list(reduced.values()))
    seen: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*touching):
        merged: dict[str, Any] = {}
        for part in combination:
            merged.update(part)
        seen.setdefault(repr(sorted(merged.items())), merged)
    return list(seen.values()) or [{}]


def _probes(axes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Assignments covering every distinct value of every group of fields (:data:`GROUPS`,
    single fields otherwise), the groups' values zipped: as few as the largest group has."""
    grouped = {f for g in GROUPS for f in g} | set(RULE_FIELDS) | {"seed"}
    groups = [*GROUPS, *((f,) for f in FIELDS if f not in grouped)]
    values = [_distinct(axes, g) for g in groups]
    probes = []
    for i in range(max(len(v) for v in values)):
        fields: dict[str, Any] = {}
        for options in values:
            fields.update(options[min(i, len(options) - 1)])
        probes.append(fields)
    return probes


def _check_configurations(
    axes: list[list[dict[str, Any]]], spec: Mapping[str, Any], src: _Source
) -> None:
    """``check_config`` on probes covering every distinct value of every group of fields; the
    rule is checked apart (:func:`_check_rules`), so the probes use the average."""
    for fields in _probes(axes):
        probe = Config(**{**fields, "gar": BASELINE_RULE, "gar_args": {}, "gars": None})
        _check_probe(probe, spec, src)


def _check_baselines(bases: list[Config], src: _Source) -> None:
    """``check_config`` on each distinct worker/attack setting of the baselines (the rest of a
    baseline is its attacked run's, already checked)."""
    seen = set()
    for config in bases:
        key = repr([getattr(config, f) for f in GROUPS[-1]])
        if key not in seen:
            seen.add(key)
            try:
                _check_probe(config, {}, src)
            except GridError as err:
                raise GridError(f"{err} (in the unattacked baseline: n - f workers)") from None


def _check_probe(probe: Config, spec: Mapping[str, Any], src: _Source) -> None:
    from jaxbyz.validation import check_config

    try:
        check_config(probe)
    except (ValueError, TypeError) as err:
        raise _reworded(str(err), probe, spec, src) from None


def _name_unknown(reason: str, name: Any) -> bool:
    quoted = re.escape(repr(name))
    return bool(
        re.search(rf"unknown\b[^;]*?{quoted}", reason)
        or re.search(rf"{quoted} is (?:unknown|not)", reason)
    )


def _reworded(message: str, probe: Config, spec: Mapping[str, Any], src: _Source) -> GridError:
    """A ``check_config`` message (``--flag ...``) as a grid error naming the field."""
    match = _FLAG.match(message)
    field = _FLAG_FIELDS.get(match.group()) if match else None
    if field is None:
        found = [
            _FLAG_FIELDS[m.group()] for m in _FLAG.finditer(message) if m.group() in _FLAG_FIELDS
        ]
        if not found:
            return GridError(f"{src.label}: {message}")
        field = found[0]
    reason = message
    if match:
        prefix = f"{match.group()} {getattr(probe, field)}: "
        reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
        reason = re.sub(r"^--[a-z0-9-]+: ", "", reason)
    reason = _FLAG.sub(lambda m: _FLAG_FIELDS.get(m.group(), m.group()), reason)
    value = getattr(probe, field)
    args = _ARGS.get(field)
    if args and getattr(probe, args) and not _name_unknown(reason, value):
        field, value = args, getattr(probe, args)
    if reason.startswith(field + " "):
        reason = reason[len(field) + 1 :]
    return GridError(f"{src.head(field, value, spec)}: {reason}")


def _check_rules(
    axes: list[list[dict[str, Any]]], spec: Mapping[str, Any], src: _Source
) -> dict[str, Any]:
    """Build every distinct rule of the grid (an unknown rule or bad arguments are errors)."""
    rules = {}
    for fields in _distinct(axes, RULE_FIELDS):
        config = Config(**fields)
        rules[_rule_key(config)] = _build_rule(config, spec, src)
    return rules


def _rule_key(config: Config) -> str:
    return repr((config.gar, config.gar_args) if config.gars is None else config.gars)


def _build_rule(config: Config, spec: Mapping[str, Any], src: _Source) -> Any:
    from jaxbyz import aggregators

    if config.gars is not None:
        try:
            return aggregators.from_gars(config.gars)
        except (ValueError, TypeError) as err:
            reason = re.sub(r"^--gars: ", "", str(err))
            raise GridError(f"{src.head('gars', config.gars, spec)}: {reason}") from None
    name = config.gar.strip().lower()
    if name not in aggregators.names() and name not in aggregators.aliases():
        try:
            aggregators.get(config.gar)
            reason = f"unknown aggregation rule {config.gar!r}"
        except ValueError as err:
            reason = str(err)
        raise GridError(f"{src.head('gar', config.gar, spec)}: {reason}")
    try:
        return aggregators.get(config.gar, **config.gar_args)
    except TypeError as err:
        reason = f"bad arguments for {config.gar}: {err}"
    except ValueError as err:
        reason = str(err)
    raise GridError(f"{src.head('gar_args', config.gar_args, spec)}: {reason}")


def _admits(config: Config, rules: Mapping[str, Any]) -> str | None:
    """Why the grid's (built) rule does not admit ``(n, f)``, or None when it does."""
    rule = rules[_rule_key(config)]
    try:
        rule_admits(config, rule)
    except ValueError as err:
        return f"{config.gar if config.gars is None else 'gars ' + config.gars}: {err}"
    return None


def inadmissible(config: Config) -> str | None:
    """Why the rule does not admit ``(n, f)`` (its ``check``), or None when it does."""
    try:
        from jaxbyz import aggregators

        if config.gars is not None:
            rule = aggregators.from_gars(config.gars)
        else:
            rule = aggregators.get(config.gar, **config.gar_args)
    except (AttributeError, ValueError, TypeError):
        rule = None
    if rule is not None:
        try:
            rule_admits(config, rule)
        except ValueError as err:
            return f"{config.gar if config.gars is None else 'gars ' + config.gars}: {err}"
        return None
    a, b = MIN_WORKERS.get(config.gar, (0, 1))
    if config.nb_workers < a * config.nb_decl_byz + b:
        return (
            f"{config.gar} needs n >= {a}f+{b}, got n={config.nb_workers}, f={config.nb_decl_byz}"
        )
    return None
