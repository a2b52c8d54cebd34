"""The configuration of one run, and its validation before anything compiles.

Field names follow the flags of the paper's ``attack.py`` (``--nb-workers`` is ``nb_workers``...).
``validate`` raises one ``ValueError`` whose message names the flag, the value and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any

from jaxbyz import aggregators, attacks
from jaxbyz.data import DATASETS
from jaxbyz.models import MODELS
from jaxbyz.momentum import check_placement
from jaxbyz.schedules import parse_piecewise

CLIP_MODES = ("scale", "paper")


@dataclasses.dataclass(frozen=True)
class Config:
    """One simulated training run. Defaults: the paper's Fashion-MNIST setting with krum."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "simples-full"
    nb_workers: int = 51
    nb_decl_byz: int = 12
    nb_real_byz: int | None = None  # None: as many as declared
    gar: str = "krum"
    gar_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    attack: str = "little"
    attack_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    momentum: float = 0.9
    momentum_at: str = "worker"
    momentum_nesterov: bool = False
    dampening: float = 0.0
    learning_rate: float = 0.5
    learning_rate_decay: int = 5000
    learning_rate_decay_delta: int = 300
    learning_rate_schedule: str | None = None
    l2_regularize: float = 1e-4
    gradient_clip: float | None = 2.0
    clip_mode: str = "scale"  # "scale": g * C/||g||; "paper": g / ||g|| as the paper's code does
    batch_size: int = 83
    nb_steps: int = 300
    evaluation_delta: int = 5
    dirichlet_alpha: float | None = None  # None: IID sampling
    seed: int = 1

    @property
    def f_real(self) -> int:
        """How many Byzantine workers really attack."""
        return self.nb_decl_byz if self.nb_real_byz is None else self.nb_real_byz

    @property
    def nb_honests(self) -> int:
        """Honest workers: all the workers that do not attack."""
        return self.nb_workers - self.f_real

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The paper's Fashion-MNIST run (issue 2's accuracy and speed reference): krum against "a little
# is enough" (factor 1.5, negative), momentum 0.9 at the workers, 300 steps, evaluation every 5.
PAPER_RUN = Config(attack_args={"factor": 1.5, "negative": True})


def parse_keyval(items: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse the paper's ``key:value`` pairs (``factor:1.5 negative:True``) into a dict.

    Values are Python literals when they parse as one (numbers, booleans, None, lists), else
    strings.
    """
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition(":")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r} is malformed; expected key:value, e.g. factor:1.5")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        result[key.replace("-", "_")] = value
    return result


def _positive(flag: str, value: float, kind: str = "a positive number") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be {kind}, got {value!r}")


def validate(config: Config) -> tuple[aggregators.Rule, attacks.Attack]:
    """Check every field; return the built rule and attack. Raises ValueError naming the flag."""
    if config.dataset not in DATASETS:
        raise ValueError(
            f"--dataset {config.dataset!r} is unknown; choose one of {', '.join(DATASETS)}"
        )
    if config.model not in MODELS:
        raise ValueError(f"--model {config.model!r} is unknown; choose one of {', '.join(MODELS)}")
    check_placement(config.momentum_at)
    for flag, value in (
        ("--batch-size", config.batch_size),
        ("--nb-steps", config.nb_steps),
        ("--evaluation-delta", config.evaluation_delta),
        ("--nb-workers", config.nb_workers),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if config.learning_rate_schedule is None:
        _positive("--learning-rate", config.learning_rate)
    else:
        parse_piecewise(config.learning_rate_schedule)
    if config.learning_rate_decay_delta <= 0:
        raise ValueError(
            "--learning-rate-decay-delta must be a positive integer, "
            f"got {config.learning_rate_decay_delta}"
        )
    if not 0.0 <= config.momentum < 1.0:
        raise ValueError(f"--momentum must be in [0, 1), got {config.momentum}")
    if not 0.0 <= config.dampening <= 1.0:
        raise ValueError(f"--dampening must be in [0, 1], got {config.dampening}")
    if config.l2_regularize < 0:
        raise ValueError(f"--l2-regularize must be >= 0, got {config.l2_regularize}")
    if config.gradient_clip is not None:
        _positive("--gradient-clip", config.gradient_clip, "a positive number (or omitted)")
    if config.clip_mode not in CLIP_MODES:
        raise ValueError(
            f"--clip-mode {config.clip_mode!r} is unknown; choose one of {', '.join(CLIP_MODES)}"
        )
    if config.dirichlet_alpha is not None:
        _positive("--dirichlet-alpha", config.dirichlet_alpha)
    if config.nb_decl_byz < 0 or config.nb_decl_byz >= config.nb_workers:
        raise ValueError(
            f"--nb-decl-byz must be in [0, nb-workers), got {config.nb_decl_byz} with "
            f"--nb-workers {config.nb_workers}; fix: declare fewer Byzantine workers or add workers"
        )
    if not 0 <= config.f_real <= config.nb_decl_byz:
        raise ValueError(
            f"--nb-real-byz must be between 0 and --nb-decl-byz ({config.nb_decl_byz}), "
            f"got {config.f_real}"
        )
    rule = _build("--gar", config.gar, config.gar_args, aggregators)
    try:
        rule.check(config.nb_workers, config.nb_decl_byz)
    except ValueError as err:
        raise ValueError(
            f"--gar {config.gar}: {err} (--nb-workers {config.nb_workers}, --nb-decl-byz "
            f"{config.nb_decl_byz}); fix: add workers or declare fewer Byzantine ones"
        ) from None
    attack = _build("--attack", config.attack, config.attack_args, attacks)
    attack.check(config.nb_workers, config.nb_decl_byz, config.f_real)
    return rule, attack


def _build(flag: str, name: str, args: dict[str, Any], family: Any) -> Any:
    try:
        return family.get(name, **args)
    except TypeError as err:
        raise ValueError(f"{flag} {name}: bad {flag}-args {args}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{flag} {name}: {err}") from None
