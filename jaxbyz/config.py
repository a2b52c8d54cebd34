"""The configuration of one run: one source for the command line, the sweep grids and the traced
hyper-parameters.

Each field of :class:`Config` carries its command-line flag (named as in the paper's
``attack.py``: ``nb_workers`` is ``--nb-workers``), its help text and how it is parsed
(:func:`flag`); ``python -m jaxbyz.train`` builds its parser from them (:mod:`jaxbyz.cli`), and a
sweep grid sets the same fields by name. :class:`HyperParams` declares, once, the numbers that
vary across runs without changing any array shape: they are traced values of the compiled
program, so that runs differing only in them share one program (the sweep's batching derives
from it). ``jaxbyz.validation.check_config`` checks a configuration before anything compiles.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Any, NamedTuple

import jax

Array = jax.Array
CLIP_MODES = ("scale", "paper")


def flag(default: Any, help: str, *, kind: str | None = None, **metadata: Any) -> Any:
    """A configuration field with its command-line metadata.

    ``kind``: ``"keyval"`` (``key:value`` pairs into a dict, as the paper's ``--gar-args``),
    ``"switch"`` (a boolean flag without value), or None (the field's type parses the value).
    Other metadata: ``paper`` (the default of the paper's ``attack.py``, which the command line
    takes so that the paper's command lines keep their meaning; the field's own default is the
    paper's Fashion-MNIST protocol, for Python and grid files), ``flag`` (the flag's name when it
    is not ``--field-name``), ``metavar``, ``choices`` (a callable listing the valid values for
    the help text), ``off_when_not_positive`` (a value <= 0 on the command line means None, as
    the paper's ``--gradient-clip 0``).
    """
    factory = {"default_factory": dict} if kind == "keyval" else {"default": default}
    return dataclasses.field(metadata={"help": help, "kind": kind, **metadata}, **factory)


def _names(module: str, attribute: str = "names") -> Any:
    """A lazy ``choices`` callable: the registered names of a jaxbyz module."""

    def names() -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(module), attribute)())

    return names


@dataclasses.dataclass(frozen=True)
class Config:
    """One simulated training run. Defaults: the paper's Fashion-MNIST setting with krum."""

    # ----- data and model
    dataset: str = flag(
        "fashion-mnist",
        "dataset: fashion-mnist, mnist (IDX files), fashion_mnist, cifar10, cifar100 "
        "(tensorflow-datasets), synthetic; the paper's names (fashionmnist) are accepted",
        paper="mnist",
    )
    data_dir: str | None = flag(
        None,
        "folder holding the dataset's files (else $JAXBYZ_DATA_DIR, Debian's "
        "/usr/share/datasets, then a one-time download into ~/.cache/jaxbyz)",
    )
    no_transform: bool = flag(
        False, "no random horizontal flips of the training images", kind="switch"
    )
    model: str = flag(
        "simples-full", "model", choices=_names("jaxbyz.models"), paper="simples-conv"
    )
    model_args: dict[str, Any] = flag(None, "model arguments, e.g. cifar100:True", kind="keyval")
    init_multi: str | None = flag(
        None, "initialiser of the >= 2-dimensional parameters (torch.nn.init names)"
    )
    init_multi_args: dict[str, Any] = flag(None, "its arguments, e.g. gain:1.0", kind="keyval")
    init_mono: str | None = flag(None, "initialiser of the 1-dimensional parameters (biases)")
    init_mono_args: dict[str, Any] = flag(None, "its arguments, e.g. val:0", kind="keyval")
    loss: str = flag("nll", "training loss", choices=_names("jaxbyz.losses"))
    loss_args: dict[str, Any] = flag(None, "loss arguments", kind="keyval")
    criterion: str = flag("top-k", "evaluation criterion (top-k accuracy)")
    criterion_args: dict[str, Any] = flag(None, "criterion arguments, e.g. k:5", kind="keyval")
    l1_regularize: float = flag(0.0, "adds lambda * ||theta||_1 to the loss")
    l2_regularize: float = flag(1e-4, "adds lambda * ||theta||_2 (the norm) to the loss", paper=0.0)
    # ----- workers
    nb_workers: int = flag(51, "total workers n", paper=11)
    nb_decl_byz: int = flag(12, "Byzantine workers f the rule tolerates", paper=4)
    nb_real_byz: int | None = flag(
        None,
        "Byzantine workers that really attack (None: as many as declared); the rest are honest",
        paper=0,
    )
    batch_size: int = flag(83, "per-worker batch", paper=25)
    dirichlet_alpha: float | None = flag(
        None,
        "non-IID: split the training set across honest workers with Dirichlet(alpha) (the same "
        "as --partition dirichlet:ALPHA)",
    )
    partition: str = flag(
        "iid",
        "how the training set is split across the honest workers: iid (no split), "
        "dirichlet:ALPHA (Dirichlet(ALPHA) shares of each class), shards:K (sorted by label, cut "
        "in K x honest shards, K each at random), sorted (sorted by label, one block each), "
        "gamma:G (a fraction G split IID, the rest sorted)",
        metavar="SPEC",
    )
    nb_local_steps: int = flag(
        1,
        "federated rounds: local steps K each participating worker takes from the server's "
        "model before sending its model change (1: standard SGD, the paper's step)",
        metavar="K",
    )
    clients_per_round: int | None = flag(
        None,
        "federated rounds: clients M sampled uniformly (without replacement) each round from "
        "the n workers; Byzantine identities are fixed for the run (default: all take part)",
        metavar="M",
    )
    round_decl_byz: int | None = flag(
        None,
        "with --clients-per-round: the Byzantine count the rule is told each round (default: "
        "the worst case min(--nb-decl-byz, M))",
    )
    local_state: str = flag(
        "keep",
        "federated rounds: the workers' optimiser state (momentum) is kept across rounds "
        "(keep) or restarted at each round (reset)",
        choices=lambda: ["keep", "reset"],
    )
    server_learning_rate: float = flag(
        1.0,
        "the server optimiser's learning rate, relative to the schedule: theta -= (this x "
        "gamma_t) x a_t (1 with sgd and local steps is FedAvg; FedOpt otherwise)",
    )
    topology: str | None = flag(
        None,
        "decentralized learning on a graph, one node per worker (no server): complete, ring, "
        "torus:RxC, two-cliques, erdos-renyi:P, star",
        metavar="GRAPH",
    )
    mixing: str = flag(
        "rule",
        "with --topology: how each honest node combines its neighbours' models: rule (--gar on "
        "its neighbourhood, told --nb-decl-byz per neighbourhood), gossip (Metropolis-Hastings "
        "weights), clipped-gossip (He, Karimireddy & Jaggi 2022)",
        choices=lambda: ["rule", "gossip", "clipped-gossip"],
    )
    mixing_args: dict[str, Any] = flag(
        None, "its arguments: clipped-gossip tau:RADIUS (default: adaptive)", kind="keyval"
    )
    # ----- aggregation and attack
    gar: str = flag(
        "krum", "aggregation rule", choices=_names("jaxbyz.aggregators"), paper="average"
    )
    gar_args: dict[str, Any] = flag(None, "rule arguments, e.g. m:1", kind="keyval")
    gars: str | None = flag(
        None,
        "a random mixture of rules, one drawn per step: 'NAME[,FREQ[,JSON]];...' e.g. "
        "'krum,2;median,1,{\"lower\": false}' (supersedes --gar/--gar-args)",
        metavar="SPEC",
    )
    attack: str = flag("little", "attack", choices=_names("jaxbyz.attacks"), paper="nan")
    attack_args: dict[str, Any] = flag(
        None, "attack arguments, e.g. factor:1.5 negative:True", kind="keyval"
    )
    # ----- optimisation
    momentum: float = flag(0.9, "momentum beta")
    momentum_at: str = flag(
        "worker",
        "where momentum is computed: update (after the rule), server (before the rule), "
        "worker (at each worker)",
        choices=lambda: ["update", "server", "worker"],
        paper="update",
    )
    momentum_nesterov: bool = flag(
        False, "Nesterov: gradients at theta - lr * beta * momentum", kind="switch"
    )
    dampening: float = flag(0.0, "dampening delta: m = beta m + (1 - delta) g")
    server_optimizer: str = flag(
        "sgd",
        "optax optimiser applied to the aggregate (sgd: the paper's theta -= lr * a)",
        choices=_names("jaxbyz.transforms", "server_optimizer_names"),
    )
    server_optimizer_args: dict[str, Any] = flag(
        None, "its arguments, e.g. b1:0.9 b2:0.999 (learning rate: --learning-rate)", kind="keyval"
    )
    weight_decay: float = flag(0.0, "adds lambda * theta to the update (PyTorch SGD's)")
    learning_rate: float = flag(0.5, "initial learning rate gamma_0", paper=0.01)
    learning_rate_decay: int = flag(
        5000, "hyperbolic half-decay time: gamma_0 / (1 + t/decay); <= 0 for none"
    )
    learning_rate_decay_delta: int = flag(300, "steps between two learning-rate updates", paper=1)
    learning_rate_schedule: str | None = flag(
        None,
        "piecewise-constant schedule; supersedes the other learning-rate flags",
        metavar="LR0[,STEP,LR]*",
    )
    gradient_clip: float | None = flag(
        2.0,
        "clip each gradient to this L2 norm; <= 0 for none",
        off_when_not_positive=True,
        paper=None,
    )
    clip_mode: str = flag(
        "scale",
        "scale: g * C/||g||; paper: g/||g|| as the paper's published runs",
        choices=lambda: list(CLIP_MODES),
    )
    # ----- length, evaluation and study
    nb_steps: int = flag(
        300, "training steps (the paper's default, -1: no limit, cannot be honoured)", paper=-1
    )
    evaluation_delta: int = flag(
        5, "steps between two evaluations; 0 for none but a final one", metavar="STEPS", paper=100
    )
    batch_size_test: int | None = flag(
        None, "test examples per evaluation batch (default: the whole test set, in chunks)"
    )
    batch_size_test_reps: int | None = flag(
        None, "evaluation batches: the first batch-size-test x reps test examples, cyclically"
    )
    nb_for_study: int = flag(
        1,
        "gradients sampled per step for the study: max(honest workers, this); <= 0: no study",
        paper=11,
    )
    nb_for_study_past: int = flag(
        1,
        "past sampled gradients kept for the study's curvature and cosine with the past",
        paper=20,
    )
    seed: int = flag(1, "PRNG seed of the run; negative: a random seed (recorded)", paper=-1)

    @property
    def f_real(self) -> int:
        """How many Byzantine workers really attack."""
        return self.nb_decl_byz if self.nb_real_byz is None else self.nb_real_byz

    @property
    def nb_honests(self) -> int:
        """Honest workers: all the workers that do not attack."""
        return self.nb_workers - self.f_real

    @property
    def federated(self) -> bool:
        """Whether the run has federated rounds: local steps, partial participation, or the
        workers' state restarted at each round."""
        return (
            self.nb_local_steps != 1
            or self.clients_per_round not in (None, self.nb_workers)
            or self.local_state == "reset"
        )

    @property
    def participants(self) -> int:
        """Workers taking part in each round (all of them without --clients-per-round)."""
        return self.nb_workers if self.clients_per_round is None else self.clients_per_round

    @property
    def round_f_decl(self) -> int:
        """The Byzantine count the rule is told each round: ``--round-decl-byz``, or the worst
        case ``min(--nb-decl-byz, M)`` for ``M`` participants."""
        if self.round_decl_byz is not None:
            return self.round_decl_byz
        return min(self.nb_decl_byz, self.participants)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(Config)
# Fields added after the first sweeps were stored: left out of a run's identifier while at their
# default, so that the identifiers of stored runs do not change.
LATER_FIELDS = (
    "no_transform",
    "model_args",
    "init_multi",
    "init_multi_args",
    "init_mono",
    "init_mono_args",
    "loss",
    "loss_args",
    "criterion",
    "criterion_args",
    "l1_regularize",
    "nb_local_steps",
    "clients_per_round",
    "round_decl_byz",
    "local_state",
    "server_learning_rate",
    "topology",
    "mixing",
    "mixing_args",
    "partition",
    "gars",
    "server_optimizer",
    "server_optimizer_args",
    "weight_decay",
    "batch_size_test",
    "batch_size_test_reps",
    "nb_for_study",
    "nb_for_study_past",
)
DEFAULTS = Config()

# The paper's Fashion-MNIST run (the accuracy and speed reference): krum against "a little is
# enough" (factor 1.5, negative), momentum 0.9 at the workers, 300 steps, evaluation every 5.
PAPER_RUN = Config(attack_args={"factor": 1.5, "negative": True})


def identity_dict(config: Config) -> dict[str, Any]:
    """The fields that identify a run: every field, except the later ones at their default."""
    return {
        name: value
        for name, value in config.to_dict().items()
        if name not in LATER_FIELDS or value != getattr(DEFAULTS, name)
    }


# ---------------------------------------------------------------------------------------------- #
# Traced hyper-parameters


class HyperParams(NamedTuple):
    """The numbers of a run that change no array shape: traced values of its compiled program.

    Runs that differ only in these (and in their seed) run as one program, ``vmap``-ed over
    them. ``attack`` holds the traced parameters of the attack (:data:`TRACED_ATTACK_ARGS`).
    ``l1_regularize`` and ``weight_decay`` enter the program only when the configuration sets
    them to a non-zero value (:data:`GATED`): their presence is static, their value traced.
    ``structure`` holds the structure choices (:func:`jaxbyz.structure.values`: placement,
    Nesterov, moment-attack coefficients), read only by programs that trace them
    (:class:`jaxbyz.structure.Traced`); a dedicated program takes them from its configuration.
    """

    learning_rate: Any
    momentum: Any
    dampening: Any
    l2_regularize: Any
    l1_regularize: Any
    weight_decay: Any
    attack: dict[str, Any]
    structure: dict[str, Any]

    @classmethod
    def from_config(cls, config: Config, attack: Any = None):
        """The traced values of ``config`` as float32 scalars; ``attack``: the built attack
        (:class:`jaxbyz.attacks.base.Attack`; built from ``config`` when None), whose traced
        parameters are taken."""
        from jaxbyz import attacks, structure
        from jaxbyz.schedules import first_rate

        if attack is None:
            attack = attacks.get(config.attack, **config.attack_args)
        attack_params = attack.params
        fields = {name: getattr(config, name) for name in TRACED_FIELDS}
        fields["learning_rate"] = first_rate(config)
        traced = {
            k: attack_params[k]
            for k in TRACED_ATTACK_ARGS
            if k in config.attack_args and k in attack_params
        }
        return cls(
            **{k: jax.numpy.float32(v) for k, v in fields.items()},
            attack=traced,
            structure=structure.values(config, attack),
        )


TRACED_FIELDS = tuple(name for name in HyperParams._fields if name not in ("attack", "structure"))
TRACED_ATTACK_ARGS = ("factor",)
GATED = ("l1_regularize", "weight_decay")


# ---------------------------------------------------------------------------------------------- #
# key:value arguments


def parse_keyval(items: list[str] | None, flag_name: str) -> dict[str, Any]:
    """Parse the paper's ``key:value`` pairs (``factor:1.5 negative:True``) into a dict.

    Values are Python literals when they parse as one (numbers, booleans, None, lists), else
    strings.
    """
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition(":")
        if not sep or not key:
            raise ValueError(
                f"{flag_name} {item!r} is malformed; expected key:value, e.g. factor:1.5"
            )
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        result[key.replace("-", "_")] = value
    return result
