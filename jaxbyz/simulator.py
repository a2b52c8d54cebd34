"""The simulator: one Byzantine SGD step as one pure function, a run as ``lax.scan``.

Data flow of a step (DESIGN section 2), workers on a leading array axis::

    key -> batches [w, b, ...] -> vmap(grad of loss) -> [w, d] -> clip -> momentum placement
        -> honest [h, d] -> attack -> byz [f, d] -> rule(concat(honest, byz), f_decl) -> update

Parameters travel as one flat vector (``ravel_pytree``) so that rules and attacks see plain
``[n, d]`` matrices. ``make_train(config)`` returns ``train(key, hparams=None)``, a pure function
of a PRNG key that runs the whole run (evaluations included) as one program, so that
``jax.vmap(train)(keys)`` runs several seeds at once. Numbers that may vary across a sweep without
changing shapes (learning rate, momentum, dampening, l2 factor, attack parameters) are traced
``hparams``; everything else is static. Given a device mesh, the worker axis is split over its
devices (:mod:`jaxbyz.sharding`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxbyz import data as data_lib
from jaxbyz import metrics as metrics_lib
from jaxbyz import momentum as momentum_lib
from jaxbyz import schedules
from jaxbyz.config import Config, validate
from jaxbyz.models import get_model
from jaxbyz.sharding import Layout

Array = jax.Array
HParams = dict[str, Any]
Data = dict[str, Array]  # device arrays: train_x, train_y, test_inputs, test_y (+ partition)
# test examples per forward pass at evaluation: the whole MNIST test set for the MLP, less for
# the convolutional models whose activations are larger
EVAL_CHUNK = {"simples-full": 10_000, "simples-conv": 2_000, "empire-cnn": 500}


@chex.dataclass
class State:
    """Everything a run carries from one step to the next."""

    theta: Array  # [d] flat model parameters
    theta0: Array  # [d] initial parameters (for the l2-from-origin metric)
    model_state: Any  # non-trainable collections (BatchNorm running statistics) or {}
    server_buffer: Array  # [d] update momentum, or previous aggregate for "server"
    worker_buffers: Array  # [w, d] per-worker momenta (w = 0 unless momentum is at the workers)
    prev_aggregate: Array  # [d] last aggregate (centre of centred clipping)
    step: Array  # int32 step counter
    key: Array


@dataclasses.dataclass(frozen=True)
class Simulation:
    """The static parts of a run and its pure functions (``init``, ``step``, ``evaluate``)."""

    config: Config
    dataset: data_lib.Dataset
    rule: Any
    attack: Any
    model: Any
    unravel: Callable[[Array], Any]
    dim: int
    model_state_shape: Any
    bound: float | None
    schedule: schedules.Schedule
    arrays: dict[str, Array]
    layout: Layout = dataclasses.field(default_factory=Layout)

    # ------------------------------------------------------------------------------------------ #
    # Shapes

    @property
    def honest(self) -> int:
        return self.config.nb_honests

    @property
    def byzantine(self) -> int:
        return self.config.f_real

    @property
    def label_flip(self) -> bool:
        return bool(self.attack.label_flip) and self.byzantine > 0

    @property
    def grad_workers(self) -> int:
        """Workers that compute real gradients: the honest ones, plus label-flipping attackers."""
        return self.honest + (self.byzantine if self.label_flip else 0)

    @property
    def buffered_workers(self) -> int:
        if self.config.momentum_at != "worker":
            return 0
        if self.label_flip and not self.attack.params.get("momentum", True):
            return self.honest
        return self.grad_workers

    def default_hparams(self) -> HParams:
        """The traced hyper-parameters, from the configuration."""
        c = self.config
        lr0 = c.learning_rate
        if c.learning_rate_schedule is not None:
            lr0 = schedules.parse_piecewise(c.learning_rate_schedule)[0][1]
        return {
            "learning_rate": jnp.float32(lr0),
            "momentum": jnp.float32(c.momentum),
            "dampening": jnp.float32(c.dampening),
            "l2_regularize": jnp.float32(c.l2_regularize),
            "attack": {},
        }

    # ------------------------------------------------------------------------------------------ #
    # Initialisation

    def init(self, key: Array) -> State:
        """The initial state: model parameters drawn from ``key``, zero momenta."""
        init_key, run_key = jax.random.split(key)
        dummy = jnp.zeros((1, *self.dataset.input_shape), jnp.float32)
        variables = self.model.init(init_key, dummy, train=False)
        theta, _ = ravel_pytree(variables["params"])
        model_state = {k: v for k, v in variables.items() if k != "params"}
        zeros = jnp.zeros_like(theta)
        return State(
            theta=theta,
            theta0=theta,
            model_state=model_state,
            server_buffer=zeros,
            worker_buffers=self.layout.rows(
                jnp.zeros((self.buffered_workers, self.dim), theta.dtype)
            ),
            prev_aggregate=zeros,
            step=jnp.zeros((), jnp.int32),
            key=run_key,
        )

    # ------------------------------------------------------------------------------------------ #
    # Gradients

    def _loss(self, theta, model_state, x, y, dropout_key, l2):
        """NLL of one worker's batch plus ``l2 * ||theta||_2`` (the paper's regulariser)."""
        variables = {"params": self.unravel(theta), **model_state}
        if model_state:
            logp, updates = self.model.apply(
                variables, x, train=True, rngs={"dropout": dropout_key}, mutable=list(model_state)
            )
        else:
            logp = self.model.apply(variables, x, train=True, rngs={"dropout": dropout_key})
            updates = {}
        nll = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        loss = nll + l2 * jnp.sqrt(jnp.sum(jnp.square(theta)) + 1e-30)
        return loss, (loss, updates)

    def _gradients(self, state: State, points: Array, key: Array, hp: HParams, data: Data):
        """Per-worker gradients ``[w, d]``, losses ``[w]`` and averaged model-state updates."""
        w = self.grad_workers
        k_idx, k_flip, k_drop = jax.random.split(key, 3)
        indices = self.layout.rows(self._sample_indices(k_idx, data))
        x, y = data_lib.gather_batches(
            k_flip, data["train_x"], data["train_y"], indices, self.dataset
        )
        if self.label_flip:
            flipped = self.dataset.num_classes - 1 - y
            y = jnp.where((jnp.arange(w) >= self.honest)[:, None], flipped, y)
        grad_fn = jax.grad(self._loss, has_aux=True)
        theta_axis = 0 if points.ndim == 2 else None
        if points.ndim == 2 and points.shape[0] != w:  # label-flippers without momentum buffers
            points = jnp.concatenate(
                [points, jnp.broadcast_to(state.theta, (w - points.shape[0], self.dim))]
            )
        grads, (losses, updates) = jax.vmap(grad_fn, in_axes=(theta_axis, None, 0, 0, 0, None))(
            points, state.model_state, x, y, jax.random.split(k_drop, w), hp["l2_regularize"]
        )
        updates = jax.tree.map(
            lambda u: metrics_lib.row_mean(u.reshape(w, -1)[: self.honest]).reshape(u.shape[1:]),
            updates,
        )
        return grads, losses, updates

    def _sample_indices(self, key: Array, data: Data) -> Array:
        """``[w, b]`` example indices: honest workers from their partition (IID by default),
        label-flipping attackers IID."""
        num_train = data["train_y"].shape[0]
        batch = self.config.batch_size
        if "partition_table" not in data:
            return data_lib.sample_indices(key, self.grad_workers, batch, num_train)
        k_honest, k_rest = jax.random.split(key)
        partition = (data["partition_table"], data["partition_lengths"])
        honest = data_lib.sample_indices(k_honest, self.honest, batch, num_train, partition)
        rest = data_lib.sample_indices(k_rest, self.grad_workers - self.honest, batch, num_train)
        return jnp.concatenate([honest, rest])

    def _clip(self, grads: Array) -> Array:
        """Per-gradient norm clipping: ``g * C/||g||`` ("scale") or ``g / ||g||`` ("paper")."""
        c = self.config
        if c.gradient_clip is None:
            return grads
        norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=1))
        target = 1.0 if c.clip_mode == "paper" else c.gradient_clip
        factor = jnp.where(norms > c.gradient_clip, target / norms, 1.0)
        return grads * factor[:, None]

    # ------------------------------------------------------------------------------------------ #
    # One step

    def step(self, state: State, hp: HParams, data: Data) -> tuple[State, dict[str, Array]]:
        """One synchronous step of Byzantine SGD; returns the new state and the study metrics."""
        c = self.config
        h, f = self.honest, self.byzantine
        beta, damp = hp["momentum"], hp["dampening"]
        key, k_grad, k_attack, k_rule = jax.random.split(state.key, 4)
        lr = self.schedule(state.step, hp["learning_rate"])

        buffers = state.worker_buffers
        points = momentum_lib.gradient_points(
            c.momentum_at, state.theta, state.server_buffer, buffers, lr, beta, c.momentum_nesterov
        )
        grads, losses, updates = self._gradients(state, points, k_grad, hp, data)
        grads = self.layout.rows(self._clip(grads))
        chex.assert_shape(grads, (self.grad_workers, self.dim))

        sent, new_buffers = self._submissions(grads, buffers, state.server_buffer, beta, damp)
        new_buffers = self.layout.rows(new_buffers)
        # attacks, rules and metrics read whole columns: coordinates split over the devices
        sent = self.layout.columns(sent)
        honest = sent[:h]
        byzantine = self._byzantine(honest, sent[h:], k_attack, hp)
        chex.assert_shape(byzantine, (f, self.dim))
        received = self.layout.columns(jnp.concatenate([honest, byzantine], axis=0))
        aggregate, accepted = self.rule.aggregate(
            received, c.nb_decl_byz, key=k_rule, prev=state.prev_aggregate
        )
        aggregate = self.layout.replicated(aggregate)
        chex.assert_shape(aggregate, (self.dim,))
        direction, server_buffer = momentum_lib.server_step(
            c.momentum_at, aggregate, state.server_buffer, beta, damp
        )
        theta = state.theta - lr * direction
        study = metrics_lib.study(
            sampled=grads[:h],
            honest=honest,
            byzantine=byzantine,
            aggregate=aggregate,
            accepted=accepted,
            loss=metrics_lib.row_mean(losses[:h, None])[0],
            l2_from_origin=jnp.linalg.norm(state.theta - state.theta0),
            learning_rate=lr,
        )
        new_state = state.replace(
            theta=theta,
            model_state={**state.model_state, **updates},
            server_buffer=server_buffer,
            worker_buffers=new_buffers,
            prev_aggregate=aggregate,
            step=state.step + 1,
            key=key,
        )
        return new_state, study

    def _submissions(self, grads, buffers, server_buffer, beta, damp):
        """Momentum placement for the workers that compute gradients (label-flippers included)."""
        if buffers.shape[0] == grads.shape[0] or self.config.momentum_at != "worker":
            return momentum_lib.submissions(
                self.config.momentum_at, grads, buffers, server_buffer, beta, damp
            )
        # label-flippers that do not use momentum send their raw gradients
        sent, new_buffers = momentum_lib.submissions(
            "worker", grads[: buffers.shape[0]], buffers, server_buffer, beta, damp
        )
        return jnp.concatenate([sent, grads[buffers.shape[0] :]]), new_buffers

    def _byzantine(self, honest: Array, flipped: Array, key: Array, hp: HParams) -> Array:
        """The ``[f, d]`` Byzantine vectors: label-flipped gradients, or the attack's output."""
        if self.byzantine == 0:
            return jnp.zeros((0, self.dim), honest.dtype)
        if self.label_flip:
            return flipped
        return self.attack(
            honest,
            self.byzantine,
            key=key,
            rule=self.rule,
            f_decl=self.config.nb_decl_byz,
            **hp["attack"],
        )

    # ------------------------------------------------------------------------------------------ #
    # Evaluation and runs

    def evaluate(self, state: State, data: Data) -> Array:
        """Top-1 accuracy on the full test set (BatchNorm in inference mode, no dropout)."""
        x, y = data["test_inputs"], data["test_y"]
        count = y.shape[0]
        size = min(EVAL_CHUNK[self.config.model], count)
        chunks = math.ceil(count / size)
        pad = chunks * size - count
        variables = {"params": self.unravel(state.theta), **state.model_state}

        def correct(args):
            xb, yb, valid = args
            logits = self.model.apply(variables, xb, train=False)
            return jnp.sum((jnp.argmax(logits, axis=1) == yb) & valid)

        xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(chunks, size, *x.shape[1:])
        ys = jnp.pad(y, (0, pad)).reshape(chunks, size)
        valid = (jnp.arange(chunks * size) < count).reshape(chunks, size)
        return jnp.sum(jax.lax.map(correct, (xs, ys, valid))) / count

    def segment(
        self, state: State, hp: HParams, data: Data, length: int
    ) -> tuple[State, dict, Array]:
        """``length`` steps (``lax.scan``) followed by one evaluation."""
        state, study = jax.lax.scan(lambda s, _: self.step(s, hp, data), state, None, length=length)
        return state, study, self.evaluate(state, data)

    def segment_lengths(self) -> list[int]:
        """Steps between evaluations: evaluations happen at step 0, every delta, and at the end."""
        c = self.config
        lengths = [c.evaluation_delta] * (c.nb_steps // c.evaluation_delta)
        if c.nb_steps % c.evaluation_delta:
            lengths.append(c.nb_steps % c.evaluation_delta)
        return lengths

    def evaluation_steps(self) -> np.ndarray:
        return np.cumsum([0, *self.segment_lengths()])

    def run(
        self, key: Array, hparams: HParams | None = None, data: Data | None = None
    ) -> dict[str, Any]:
        """The whole run as one traced program (pure in ``key``): accuracies and study metrics.

        ``data`` defaults to the simulation's device arrays. Under ``jit``, arrays a function
        closes over are embedded in the program as constants (slow to compile for a real
        dataset): pass ``data=sim.arrays`` as an argument of the jitted function instead.
        """
        hp = self.default_hparams() if hparams is None else {**self.default_hparams(), **hparams}
        data = self.arrays if data is None else data
        state = self.init(key)
        accuracies = [self.evaluate(state, data)]
        lengths = self.segment_lengths()
        full, rest = lengths.count(self.config.evaluation_delta), lengths[len(lengths) - 1]
        if full:

            def body(s, _):
                s, study, acc = self.segment(s, hp, data, self.config.evaluation_delta)
                return s, (study, acc)

            state, (study, accs) = jax.lax.scan(body, state, None, length=full)
            accuracies.append(accs)
            studies = [jax.tree.map(lambda v: v.reshape(-1), study)]
        else:
            studies = []
        if len(lengths) > full:
            state, study, acc = self.segment(state, hp, data, rest)
            accuracies.append(acc[None])
            studies.append(study)
        accuracy = jnp.concatenate([jnp.atleast_1d(a) for a in accuracies])
        study = {k: jnp.concatenate([s[k] for s in studies]) for k in metrics_lib.NAMES}
        return {"accuracy": accuracy, "study": study, "theta": state.theta}


def _device_arrays(config: Config, dataset: data_lib.Dataset, layout: Layout) -> dict[str, Array]:
    """The data sets on the device (replicated on every device of a mesh)."""
    arrays = data_lib.host_arrays(dataset)
    if config.dirichlet_alpha is not None:
        table, lengths = data_lib.dirichlet_partition(
            dataset.train_y, config.nb_honests, config.dirichlet_alpha, seed=config.seed
        )
        arrays["partition_table"] = table
        arrays["partition_lengths"] = lengths
    if layout.mesh is not None:
        return layout.place(arrays)
    return {name: jnp.asarray(value) for name, value in arrays.items()}


def make_simulation(
    config: Config, dataset: data_lib.Dataset | None = None, mesh: Mesh | None = None
) -> Simulation:
    """Validate ``config``, load the data (unless given) and build the static simulation.

    With a ``mesh`` (:func:`jaxbyz.sharding.worker_mesh`), the worker axis is split over its
    devices (see :mod:`jaxbyz.sharding`); pass inputs through ``simulation.layout.place``.
    """
    rule, attack = validate(config)
    layout = Layout(mesh)
    if dataset is None:
        dataset = data_lib.load_dataset(config.dataset, config.data_dir)
    model = get_model(config.model, dataset.num_classes)
    dummy = jnp.zeros((1, *dataset.input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
    flat, unravel = ravel_pytree(params)
    if config.learning_rate_schedule is None:
        schedule = schedules.hyperbolic(
            config.learning_rate_decay, config.learning_rate_decay_delta
        )
    else:
        schedule = schedules.piecewise(schedules.parse_piecewise(config.learning_rate_schedule))
    return Simulation(
        config=config,
        dataset=dataset,
        rule=rule,
        attack=attack,
        model=model,
        unravel=unravel,
        dim=int(flat.shape[0]),
        model_state_shape={k: v for k, v in shapes.items() if k != "params"},
        bound=rule.upper_bound(config.nb_workers, config.nb_decl_byz, int(flat.shape[0])),
        schedule=schedule,
        arrays=_device_arrays(config, dataset, layout),
        layout=layout,
    )


def make_train(
    config: Config, dataset: data_lib.Dataset | None = None, mesh: Mesh | None = None
) -> Callable[..., dict[str, Any]]:
    """``train(key, hparams=None, data=None) -> {"accuracy": [E], "study": {name: [T]}, "theta"}``.

    A pure function of ``key``: ``jax.jit(jax.vmap(train))(keys)`` runs several seeds as one
    program. ``hparams`` may override ``learning_rate``, ``momentum``, ``dampening``,
    ``l2_regularize`` (traced scalars) and ``attack`` (a dict of attack parameters). For a real
    dataset pass its device arrays, ``train.data``, as an argument rather than letting the
    function close over them (closed-over arrays are compiled in as constants):
    ``jax.jit(jax.vmap(train, in_axes=(0, None, None)))(keys, None, train.data)``.
    """
    sim = make_simulation(config, dataset, mesh)

    def train(key: Array, hparams: HParams | None = None, data: Data | None = None):
        return sim.run(key, hparams, data)

    train.data = sim.arrays
    train.simulation = sim
    return train
