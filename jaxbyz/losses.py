"""Training losses (the paper's ``--loss`` / ``--loss-args``) and evaluation criteria
(``--criterion`` / ``--criterion-args``), on the models' outputs and integer class labels.

The paper's code resolves ``--loss NAME`` to the ``torch.nn.<Name>Loss`` class whose lower-case
name without ``Loss`` is ``NAME``, called on the model's output and the labels. Every model here
ends with a log-softmax, so its output ``x [b, K]`` holds log-probabilities, and the labels
``y [b]`` are class indices. The losses that are meaningful on such pairs follow torch's
definitions and arguments exactly (``w``: the optional per-class ``weight``, all ones if absent;
``reduction='mean'``, torch's default, divides by the total weight of the counted examples,
``'sum'`` does not divide):

- ``nll`` (``NLLLoss``; the default): ``l_i = -w[y_i] x[i, y_i]``; mean: ``sum_i l_i / sum_i
  w[y_i]``, without a weight simply ``-mean_i x[i, y_i]``. Arguments: ``weight``,
  ``ignore_index`` (-100: examples of that label are left out), ``reduction``.
- ``crossentropy`` (``CrossEntropyLoss``; aliases ``cross-entropy``, ``ce``): the same on
  ``z = log_softmax(x)`` (so on log-probabilities it equals ``nll`` up to rounding), with label
  smoothing ``eps``: ``l_i = (1 - eps) w[y_i] (-z[i, y_i]) + (eps / K) sum_c w[c] (-z[i, c])``;
  mean: ``sum_i l_i / sum_i w[y_i]``. Arguments: ``weight``, ``ignore_index``, ``reduction``,
  ``label_smoothing`` (0, in [0, 1]). Computed with optax's softmax cross-entropy.
- ``multimargin`` (``MultiMarginLoss``): ``l_i = sum_{j != y_i} w[y_i] max(0, margin - x[i, y_i]
  + x[i, j])^p / K``; mean: ``mean_i l_i`` (not weight-normalised, as torch). Arguments: ``p``
  (1 or 2; default 1), ``margin`` (1.0), ``weight``, ``reduction``.

``get(name, **args)`` returns ``loss(outputs [b, K], labels [b] int) -> scalar``; ``names()``
lists the losses; ``check_loss`` validates a configuration without arrays. The other torch loss
names (``mse``, ``bce``, ``kldiv``, ``ctc``, ...) are refused with the reason (they need targets
shaped like the outputs, several inputs, ...), and so are ``l1`` and ``l2``, which the paper's
code redefines as the parameter norms ``||theta||_1`` and ``||theta||_2`` (the
``--l1-regularize`` / ``--l2-regularize`` regularisers).

In the step (:mod:`jaxbyz.simulator`), each worker's gradient is that of the loss of its batch
(plus the regularisers); the criterion scores the model at every evaluation.

Criteria (evaluation; ``criterion(name, **args)`` returns ``correct(outputs [b, K], labels [b])
-> bool [b]``, ``check_criterion`` validates without arrays):

- ``top-k`` (the paper's default; argument ``k``, default 1): example ``i`` is correct when
  ``y_i`` is among the indices of the ``k`` largest ``x[i, :]`` (``k = 1``: ``argmax_j x[i, j]
  == y_i``, the first maximum on ties, as ``jnp.argmax``).
- ``sigmoid`` is refused: it thresholds the single output of a one-output model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbyz._registry import Registry

__all__ = [
    "aliases",
    "check_criterion",
    "check_loss",
    "criterion",
    "criterion_names",
    "get",
    "names",
    "parameters",
    "refused",
]

Loss = Callable[[jax.Array, jax.Array], jax.Array]
Criterion = Callable[[jax.Array, jax.Array], jax.Array]

_LOSSES: Registry[Loss] = Registry("loss function")
_CRITERIA: Registry[Criterion] = Registry("criterion")

# canonical name -> accepted arguments (with their defaults)
_LOSS_PARAMS: dict[str, dict[str, Any]] = {}
_CRITERION_PARAMS: dict[str, dict[str, Any]] = {}

_CLASSIFIER = (
    "the models here are classifiers giving log-probabilities [b, K] for integer labels [b]"
)

# torch.nn.*Loss names that cannot be honoured here -> (torch class, why)
_REFUSED_LOSSES: dict[str, tuple[str, str]] = {
    "l1": (
        "",
        "is the regulariser ||theta||_1 (it replaces torch's L1Loss), not a loss on the "
        "outputs: add it with --l1-regularize",
    ),
    "l2": (
        "",
        "is the regulariser ||theta||_2, not a loss on the outputs: add it with --l2-regularize",
    ),
    "mse": ("MSELoss", "needs regression targets shaped like the outputs"),
    "smoothl1": ("SmoothL1Loss", "needs regression targets shaped like the outputs"),
    "huber": ("HuberLoss", "needs regression targets shaped like the outputs"),
    "bce": ("BCELoss", "needs probabilities and 0/1 targets shaped like the outputs"),
    "bcewithlogits": ("BCEWithLogitsLoss", "needs logits and 0/1 targets shaped like the outputs"),
    "kldiv": ("KLDivLoss", "needs a target distribution shaped like the outputs"),
    "poissonnll": ("PoissonNLLLoss", "needs Poisson rates and count targets shaped like them"),
    "gaussiannll": ("GaussianNLLLoss", "needs a variance input and real targets like the outputs"),
    "hingeembedding": ("HingeEmbeddingLoss", "needs distances and +1/-1 targets like the outputs"),
    "softmargin": ("SoftMarginLoss", "needs +1/-1 targets shaped like the outputs"),
    "multilabelmargin": (
        "MultiLabelMarginLoss",
        "needs multi-label targets shaped like the outputs (class indices padded with -1)",
    ),
    "multilabelsoftmargin": (
        "MultiLabelSoftMarginLoss",
        "needs multi-hot targets shaped like the outputs",
    ),
    "cosineembedding": ("CosineEmbeddingLoss", "needs two inputs (pairs) and +1/-1 targets"),
    "marginranking": ("MarginRankingLoss", "needs two inputs (pairs to rank) and +1/-1 targets"),
    "tripletmargin": ("TripletMarginLoss", "needs anchor, positive and negative inputs"),
    "tripletmarginwithdistance": (
        "TripletMarginWithDistanceLoss",
        "needs anchor, positive and negative inputs",
    ),
    "ctc": ("CTCLoss", "needs per-step log-probabilities [T, b, K], target sequences and lengths"),
}

_REFUSED_CRITERIA = {
    "sigmoid": "needs a one-output model (a probability in [0, 1] thresholded against a 0/1 "
    "label); the models here output log-probabilities over the classes: use top-k",
}


# ---------------------------------------------------------------------------------------------- #
# Names and arguments


def _key(name: Any) -> str:
    key = str(name).strip().lower()
    return key[:-4] if key.endswith("loss") and len(key) > 4 else key  # "NLLLoss" -> "nll"


def _loss_name(name: str) -> str:
    key = _key(name)
    if key in _REFUSED_LOSSES:
        cls, why = _REFUSED_LOSSES[key]
        if cls:
            why = f"torch's {cls} {why}; {_CLASSIFIER}"
        else:
            why = f"in the paper's code, {key} {why}"
        raise ValueError(f"--loss {name}: {why}; use one of {', '.join(names())}")
    try:
        return _LOSSES.canonical(key)
    except ValueError as error:
        raise ValueError(f"--loss: {error}") from None


def _criterion_name(name: str) -> str:
    key = str(name).strip().lower()
    if key in _REFUSED_CRITERIA:
        raise ValueError(f"--criterion {name}: {_REFUSED_CRITERIA[key]}")
    try:
        return _CRITERIA.canonical(key)
    except ValueError as error:
        raise ValueError(f"--criterion: {error}") from None


def _arguments(flag: str, what: str, defaults: dict[str, Any], args: dict[str, Any]) -> dict:
    unknown = [k for k in args if k not in defaults]
    if unknown:
        raise ValueError(
            f"{flag}: {what} takes no argument {', '.join(unknown)}; "
            f"accepted: {', '.join(defaults) or 'none'}"
        )
    return {**defaults, **args}


def _invalid(flag: str, what: str, arg: str, value: Any, fix: str) -> ValueError:
    return ValueError(f"{flag}: {what} {arg}={value!r} is invalid; {fix}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_reduction(what: str, value: Any) -> None:
    if value == "none":
        raise _invalid(
            "--loss-args",
            what,
            "reduction",
            value,
            "the simulator differentiates one scalar per worker: use mean (torch's default) or sum",
        )
    if value not in ("mean", "sum"):
        raise _invalid("--loss-args", what, "reduction", value, "use mean or sum")


def _check_weight(what: str, weight: Any, num_classes: int | None) -> None:
    if weight is None:
        return
    try:
        values = None if isinstance(weight, (str, bytes)) else np.asarray(weight, np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or not np.isfinite(values).all():
        raise _invalid(
            "--loss-args", what, "weight", weight, "pass a list of finite numbers, one per class"
        )
    if num_classes is not None and len(values) != num_classes:
        raise _invalid(
            "--loss-args",
            what,
            "weight",
            weight,
            f"torch needs one weight per class ({num_classes}), got {len(values)}",
        )


def _check_ignore_index(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("--loss-args", what, "ignore_index", value, "pass an integer")


_CHECKS: dict[str, Callable[[dict[str, Any], int | None], None]] = {}


def _register_loss(name: str, *aliases: str, check, **defaults: Any):
    """Register a loss factory with its argument ``check`` and torch's ``defaults``."""

    def decorate(factory):
        _LOSSES.register(name, *aliases)(factory)
        _CHECKS[name] = check
        _LOSS_PARAMS[name] = defaults
        return factory

    return decorate


def check_loss(name: str, num_classes: int | None = None, **args: Any) -> str:
    """Validate ``--loss name`` with ``--loss-args`` (and the class count, if known).

    Returns the canonical name; raises a one-line ValueError naming the loss and the fix (a
    refused torch loss says why, an unknown name lists the known ones).
    """
    loss = _loss_name(name)
    full = _arguments("--loss-args", loss, _LOSS_PARAMS[loss], args)
    _CHECKS[loss](full, num_classes)
    return loss


def get(name: str, **args: Any) -> Loss:
    """The loss ``name`` (or an alias, or torch's class name) with ``args``: ``(outputs, labels)
    -> scalar``. Validates like :func:`check_loss`; a ``weight`` whose length is not the number
    of output columns raises ValueError when the loss is called (traced)."""
    loss = check_loss(name, **args)
    return _LOSSES.get(loss, **{**_LOSS_PARAMS[loss], **args})


def names() -> list[str]:
    """The canonical loss names, sorted."""
    return _LOSSES.names()


def aliases() -> dict[str, str]:
    """Alias -> canonical loss name."""
    return _LOSSES.aliases()


def parameters(name: str) -> dict[str, Any]:
    """The arguments of loss ``name`` with their defaults (torch's)."""
    return dict(_LOSS_PARAMS[_loss_name(name)])


def refused() -> dict[str, str]:
    """The torch loss names refused here -> why (the one-line message :func:`get` raises)."""
    reasons = {}
    for key in _REFUSED_LOSSES:
        try:
            _loss_name(key)
        except ValueError as error:
            reasons[key] = str(error)
    return reasons


# ---------------------------------------------------------------------------------------------- #
# Losses


def _class_weights(what: str, weight, outputs: jax.Array) -> jax.Array:
    classes = outputs.shape[-1]
    if len(weight) != classes:
        raise ValueError(
            f"--loss-args: {what} weight has {len(weight)} entries but the model has {classes} "
            "outputs; torch needs one weight per class"
        )
    return jnp.asarray(weight, outputs.dtype)


def _reduce(total_terms: jax.Array, norm_terms: jax.Array, keep, reduction: str) -> jax.Array:
    """``sum(total)`` (reduction 'sum') or ``sum(total) / sum(norm)`` ('mean') over ``keep``."""
    total = jnp.sum(jnp.where(keep, total_terms, 0))
    if reduction == "sum":
        return total
    return total / jnp.sum(jnp.where(keep, norm_terms, 0))


def _check_nll(args: dict[str, Any], num_classes: int | None) -> None:
    _check_weight("nll", args["weight"], num_classes)
    _check_ignore_index("nll", args["ignore_index"])
    _check_reduction("nll", args["reduction"])


@_register_loss("nll", "nll2d", check=_check_nll, weight=None, ignore_index=-100, reduction="mean")
def _nll(weight, ignore_index, reduction) -> Loss:
    if weight is None and ignore_index < 0 and reduction == "mean":

        def nll(outputs: jax.Array, labels: jax.Array) -> jax.Array:
            # labels are >= 0, so a negative ignore_index leaves none out: torch's plain mean
            return -jnp.mean(jnp.take_along_axis(outputs, labels[:, None], axis=1))

        return nll

    def weighted_nll(outputs: jax.Array, labels: jax.Array) -> jax.Array:
        picked = jnp.take_along_axis(outputs, labels[:, None], axis=1)[:, 0]
        w = (
            jnp.ones_like(picked)
            if weight is None
            else _class_weights("nll", weight, outputs)[labels]
        )
        return _reduce(-w * picked, w, labels != ignore_index, reduction)

    return weighted_nll


def _check_crossentropy(args: dict[str, Any], num_classes: int | None) -> None:
    _check_nll(args, num_classes)
    eps = args["label_smoothing"]
    if not _is_number(eps) or not 0 <= eps <= 1:
        raise _invalid(
            "--loss-args", "crossentropy", "label_smoothing", eps, "pass a number in [0, 1]"
        )


@_register_loss(
    "crossentropy",
    "cross-entropy",
    "ce",
    check=_check_crossentropy,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
)
def _crossentropy(weight, ignore_index, reduction, label_smoothing) -> Loss:
    eps = float(label_smoothing)
    if weight is None and ignore_index < 0 and reduction == "mean":

        def crossentropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
            if eps == 0:
                per_example = optax.losses.softmax_cross_entropy_with_integer_labels(
                    outputs, labels
                )
            else:  # targets (1 - eps) onehot(y) + eps / K: torch's label smoothing
                onehot = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
                per_example = optax.losses.softmax_cross_entropy(
                    outputs, optax.smooth_labels(onehot, eps)
                )
            return jnp.mean(per_example)

        return crossentropy

    def weighted_crossentropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
        nll = optax.losses.softmax_cross_entropy_with_integer_labels(outputs, labels)
        if weight is None:
            w = jnp.ones(outputs.shape[-1], outputs.dtype)
        else:
            w = _class_weights("crossentropy", weight, outputs)
        w_y = w[labels]
        terms = (1 - eps) * w_y * nll
        if eps:  # (eps / K) sum_c w[c] (-log_softmax(x)[c]): a cross-entropy against targets w
            smooth = optax.losses.softmax_cross_entropy(outputs, jnp.broadcast_to(w, outputs.shape))
            terms = terms + (eps / outputs.shape[-1]) * smooth
        return _reduce(terms, w_y, labels != ignore_index, reduction)

    return weighted_crossentropy


def _check_multimargin(args: dict[str, Any], num_classes: int | None) -> None:
    p = args["p"]
    if isinstance(p, bool) or p not in (1, 2):
        raise _invalid("--loss-args", "multimargin", "p", p, "torch supports only p=1 and p=2")
    if not _is_number(args["margin"]):
        raise _invalid("--loss-args", "multimargin", "margin", args["margin"], "pass a number")
    _check_weight("multimargin", args["weight"], num_classes)
    _check_reduction("multimargin", args["reduction"])


@_register_loss(
    "multimargin", check=_check_multimargin, p=1, margin=1.0, weight=None, reduction="mean"
)
def _multimargin(p, margin, weight, reduction) -> Loss:
    def multimargin(outputs: jax.Array, labels: jax.Array) -> jax.Array:
        classes = outputs.shape[-1]
        target = jnp.take_along_axis(outputs, labels[:, None], axis=1)
        hinge = jnp.maximum(margin - target + outputs, 0)
        if p == 2:
            hinge = jnp.square(hinge)
        others = jnp.arange(classes)[None, :] != labels[:, None]
        per_example = jnp.sum(jnp.where(others, hinge, 0), axis=1) / classes
        if weight is not None:
            per_example = _class_weights("multimargin", weight, outputs)[labels] * per_example
        return jnp.sum(per_example) if reduction == "sum" else jnp.mean(per_example)

    return multimargin


# ---------------------------------------------------------------------------------------------- #
# Criteria


def check_criterion(name: str, num_classes: int | None = None, **args: Any) -> str:
    """Validate ``--criterion name`` with ``--criterion-args`` (and the class count, if known).

    Returns the canonical name; raises a one-line ValueError otherwise.
    """
    crit = _criterion_name(name)
    full = _arguments("--criterion-args", crit, _CRITERION_PARAMS[crit], args)
    k = full["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise _invalid("--criterion-args", crit, "k", k, "pass a positive integer")
    if num_classes is not None and k > num_classes:
        raise _invalid(
            "--criterion-args",
            crit,
            "k",
            k,
            f"it exceeds the {num_classes} classes (torch's topk would fail)",
        )
    return crit


def criterion(name: str, **args: Any) -> Criterion:
    """The criterion ``name`` with ``args``: ``(outputs [b, K], labels [b]) -> correct [b]``."""
    crit = check_criterion(name, **args)
    return _CRITERIA.get(crit, **{**_CRITERION_PARAMS[crit], **args})


def criterion_names() -> list[str]:
    """The canonical criterion names, sorted."""
    return _CRITERIA.names()


_CRITERION_PARAMS["top-k"] = {"k": 1}


@_CRITERIA.register("top-k", "topk")
def _top_k(k: int) -> Criterion:
    def top_k(outputs: jax.Array, labels: jax.Array) -> jax.Array:
        if k > outputs.shape[-1]:
            raise ValueError(
                f"--criterion-args: top-k k={k} exceeds the model's {outputs.shape[-1]} outputs"
            )
        if k == 1:
            return jnp.argmax(outputs, axis=1) == labels
        _, indices = jax.lax.top_k(outputs, k)
        return jnp.any(indices == labels[:, None], axis=1)

    return top_k
