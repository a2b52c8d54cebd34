"""The simulator: one Byzantine SGD step assembled from optax transformations, a run as
``lax.scan``.

Data flow of a step, workers on a leading array axis (``w`` gradient rows: the ``h`` honest
workers, then the extra rows sampled for the study only, then the data-poisoning attackers)::

    key ─► batches [w, b, ...] ─► poison hook (attackers' batches) ─► vmap(grad of loss) [w, d]
        ─► per_worker(clip)                                   gradient estimates (the "sampled")
        ─► worker stage (per_worker momentum / server mix)    honest submissions [h, d]
        ─► attack(honest) or poisoned rows                    Byzantine rows [f, d]
        ─► robust_aggregate(rule, f_decl)                     aggregate [d]
        ─► server stage (momentum, weight decay, optimiser)   update [d]  ─► θ + update

The stages are :mod:`jaxbyz.transforms` composed per momentum placement by
:func:`jaxbyz.momentum.compose`; the learning rate is an optax schedule (:mod:`jaxbyz.schedules`)
read by the server optimiser (any optax optimiser, ``sgd`` by default). Parameters travel as
one flat vector (``ravel_pytree``) so that rules and attacks see plain ``[n, d]`` matrices.

``make_train(config)`` returns ``train(key, hparams=None)``, a pure function of a PRNG key that
runs the whole run (evaluations included) as one program, so that ``jax.vmap(train)(keys)`` runs
several seeds at once. The numbers of :class:`jaxbyz.config.HyperParams` are traced; everything
else is static. Given a device mesh, the worker axis is split over its devices
(:mod:`jaxbyz.sharding`). :mod:`jaxbyz.driver` runs the same functions segment by segment.

Two settings change the step and reuse its parts: federated rounds (local steps, partial
participation: :class:`jaxbyz.federated.FederatedSimulation`) and learning on a graph without a
server (:class:`jaxbyz.decentralized.DecentralizedSimulation`); :func:`simulation_class` picks the
one a configuration runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxbyz import data as data_lib
from jaxbyz import initializers, losses, models, schedules, transforms
from jaxbyz import metrics as metrics_lib
from jaxbyz.attacks.statistics import mean_std
from jaxbyz.config import Config, HyperParams
from jaxbyz.momentum import Composition, compose, compose_traced
from jaxbyz.resources import check_memory
from jaxbyz.rows import broadcast_row, row_mean
from jaxbyz.sharding import Layout
from jaxbyz.structure import STATIC, Traced
from jaxbyz.validation import check_config

Array = jax.Array
Data = dict[str, Array]  # device arrays: train_x, train_y, test_inputs, test_y (+ partition)
# test examples per forward pass at evaluation: the whole MNIST test set for the MLP, less for
# the convolutional models whose activations are larger
EVAL_CHUNK = {"simples-full": 10_000, "simples-conv": 2_000, "empire-cnn": 500}
DEFAULT_EVAL_CHUNK = 1_000
PAPER_TEST_BATCH = 100  # the paper's --batch-size-test and --batch-size-test-reps defaults


@chex.dataclass
class State:
    """Everything a run carries from one step to the next."""

    theta: Array  # [d] flat model parameters
    theta0: Array  # [d] initial parameters (for the distance-from-origin metric)
    model_state: Any  # non-trainable collections (BatchNorm running statistics) or {}
    worker_state: Any  # optax state of the honest workers' stage (leaves [h, ...])
    poisoner_state: Any  # optax state of the data-poisoning workers' stage (leaves [f, ...])
    aggregator_state: transforms.RobustAggregateState  # previous aggregate, accepted rows
    server_state: Any  # optax state of the server stage (momentum, optimiser, step count)
    past: Array  # [P, d] past sampled-gradient means, a ring (the study's curvature)
    attack_drift: Array  # [d] the deviation an attack with a memory has caused ([0] otherwise)
    step: Array  # int32 step counter
    key: Array


class Submissions(NamedTuple):
    """What the workers computed in one step (or one federated round)."""

    sampled: Array  # [s, d] gradient estimates of honest data at θ (the study's "sampled")
    loss: Array  # mean training loss of the sampled rows
    model_updates: Any  # the honest rows' averaged model-state updates (BatchNorm statistics)
    honest: Array  # [h, d] what the honest workers send
    poisoned: Array  # [f, d] what the data-poisoning attackers send ([0, d] without them)
    worker_state: Any
    poisoner_state: Any


@dataclasses.dataclass(frozen=True)
class Stages:
    """The transformations of one step, built from the traced hyper-parameters."""

    schedule: optax.Schedule
    clip: optax.GradientTransformationExtraArgs  # every gradient row
    composition: Composition  # the honest workers' stage and the server stage
    poisoner: optax.GradientTransformationExtraArgs  # the data-poisoning attackers' stage
    aggregator: optax.GradientTransformationExtraArgs


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
    arrays: dict[str, Array]
    layout: Layout = dataclasses.field(default_factory=Layout)
    traced: Traced = STATIC  # structure choices read from ``HyperParams.structure``

    # ------------------------------------------------------------------------------------------ #
    # Shapes

    @property
    def honest(self) -> int:
        return self.config.nb_honests

    @property
    def byzantine(self) -> int:
        return self.config.f_real

    @property
    def poisoning(self) -> bool:
        """Whether the Byzantine rows are real gradients of poisoned data (label flipping)."""
        return self.attack.poison is not None and self.byzantine > 0

    @property
    def remembers(self) -> bool:
        """Whether the attack reads the deviation it has caused so far (``Attack.needs_drift``)."""
        return self.attack.needs_drift and self.byzantine > 0 and not self.poisoning

    @property
    def study_extra(self) -> int:
        """Rows sampled for the study only (``--nb-for-study`` above the honest count)."""
        return max(0, self.config.nb_for_study - self.honest)

    @property
    def sampled(self) -> int:
        """Gradient rows of honest data: the honest workers and the study-only rows."""
        return self.honest + self.study_extra

    @property
    def grad_workers(self) -> int:
        """Rows whose gradient is computed: honest, study-only, data-poisoning attackers."""
        return self.sampled + (self.byzantine if self.poisoning else 0)

    @property
    def worker_rows(self) -> int:
        """Rows of the honest workers' stage: one per honest worker."""
        return self.honest

    @property
    def past_window(self) -> int:
        """Past sampled means the study keeps (at least the previous one)."""
        return max(1, self.config.nb_for_study_past)

    def default_hparams(self) -> HyperParams:
        """The traced hyper-parameters, from the configuration."""
        return HyperParams.from_config(self.config, self.attack)

    def hyperparams(self, overrides: HyperParams | dict[str, Any] | None) -> HyperParams:
        """The configuration's hyper-parameters with ``overrides`` (a dict or HyperParams)."""
        if isinstance(overrides, HyperParams):
            return overrides
        hp = self.default_hparams()
        if not overrides:
            return hp
        unknown = set(overrides) - set(HyperParams._fields)
        if unknown:
            raise ValueError(
                f"hparams: unknown field(s) {sorted(unknown)}; traced hyper-parameters: "
                f"{', '.join(HyperParams._fields)}"
            )
        return hp._replace(**overrides)

    # ------------------------------------------------------------------------------------------ #
    # The transformations

    def stages(self, hp: HyperParams) -> Stages:
        """The step's transformations, with the traced values of ``hp``."""
        c = self.config
        schedule = schedules.from_config(c, hp.learning_rate)
        server_schedule = schedule
        if c.server_learning_rate != 1.0:  # --server-learning-rate scales the server's rate

            def server_schedule(count):
                return c.server_learning_rate * schedule(count)

        optimizer = transforms.server_optimizer(
            c.server_optimizer, server_schedule, **c.server_optimizer_args
        )
        placement = dict(
            beta=hp.momentum,
            dampening=hp.dampening,
            optimizer=optimizer,
            weight_decay=hp.weight_decay if c.weight_decay else None,
        )
        if self.traced.placement:
            composition = compose_traced(
                hp.structure["placement"], num_workers=self.worker_rows, **placement
            )
        else:
            composition = compose(c.momentum_at, num_workers=self.worker_rows, **placement)
        poisoners = self.byzantine if self.poisoning else 0
        # poisoning attackers run the honest workers' stage, or send raw gradients
        poison_placement = c.momentum_at if self.attack.params.get("momentum", True) else "update"
        poisoner = compose(poison_placement, num_workers=poisoners, **placement).worker
        clip = transforms.per_worker(self._clip(), self.grad_workers)
        aggregator = transforms.robust_aggregate(
            self.rule, c.round_f_decl, num_workers=c.participants
        )
        return Stages(schedule, clip, composition, poisoner, aggregator)

    def _clip(self) -> optax.GradientTransformation:
        """The clipping of one gradient (``--gradient-clip``; the identity without it)."""
        c = self.config
        if c.gradient_clip is None:
            return optax.identity()
        return transforms.clip_by_norm(
            c.gradient_clip, "unit" if c.clip_mode == "paper" else "scale"
        )

    # ------------------------------------------------------------------------------------------ #
    # Initialisation

    def init(self, key: Array) -> State:
        """The initial state: model parameters drawn from ``key``, zero momenta."""
        init_key, run_key = jax.random.split(key)
        dummy = jnp.zeros((1, *self.dataset.input_shape), jnp.float32)
        variables = self.model.init(init_key, dummy, train=False)
        params = variables["params"]
        c = self.config
        if c.init_multi is not None or c.init_mono is not None:
            params = initializers.reinitialize(
                params,
                jax.random.fold_in(init_key, 1),
                multi=None if c.init_multi is None else (c.init_multi, c.init_multi_args),
                mono=None if c.init_mono is None else (c.init_mono, c.init_mono_args),
            )
        theta, _ = ravel_pytree(params)
        model_state = {k: v for k, v in variables.items() if k != "params"}
        stages = self.stages(self.default_hparams())
        rows = self.layout.rows
        return State(
            theta=theta,
            theta0=theta,
            model_state=model_state,
            worker_state=jax.tree.map(rows, stages.composition.worker.init(theta)),
            poisoner_state=jax.tree.map(rows, stages.poisoner.init(theta)),
            aggregator_state=stages.aggregator.init(theta),
            server_state=stages.composition.server.init(theta),
            past=jnp.zeros((self.past_window, self.dim), theta.dtype),
            attack_drift=jnp.zeros((self.dim if self.remembers else 0,), theta.dtype),
            step=jnp.zeros((), jnp.int32),
            key=run_key,
        )

    # ------------------------------------------------------------------------------------------ #
    # Gradients

    def _loss(self, theta, model_state, x, y, dropout_key, hp: HyperParams):
        """The loss of one worker's batch plus the regularisers ``λ2 ||θ||_2 (+ λ1 ||θ||_1)``."""
        variables = {"params": self.unravel(theta), **model_state}
        if model_state:
            outputs, updates = self.model.apply(
                variables, x, train=True, rngs={"dropout": dropout_key}, mutable=list(model_state)
            )
        else:
            outputs = self.model.apply(variables, x, train=True, rngs={"dropout": dropout_key})
            updates = {}
        loss_fn = losses.get(self.config.loss, **self.config.loss_args)
        loss = loss_fn(outputs, y) + hp.l2_regularize * jnp.sqrt(jnp.sum(jnp.square(theta)) + 1e-30)
        if self.config.l1_regularize:
            loss = loss + hp.l1_regularize * jnp.sum(jnp.abs(theta))
        return loss, (loss, updates)

    def _gradients(self, state: State, points: Array, key: Array, hp: HyperParams, data: Data):
        """Per-row gradients ``[w, d]``, losses ``[w]`` and the honest rows' averaged
        model-state updates (BatchNorm statistics)."""
        w = self.grad_workers
        honest_keys = jax.random.split(key, 3)
        x, y, drop = self._batches(honest_keys, self.honest, data, partitioned=True)
        if w > self.honest:  # the study-only rows and the data-poisoning attackers
            rest_keys = jax.random.split(jax.random.fold_in(key, 1), 3)
            rx, ry, rdrop = self._batches(rest_keys, w - self.honest, data, partitioned=False)
            if self.poisoning:  # the hook of the gradient stage: the attackers' batches
                poisoned = slice(self.study_extra, None)
                px, py = self.attack.poison(
                    rx[poisoned],
                    ry[poisoned],
                    key=jax.random.fold_in(key, 2),
                    num_classes=self.dataset.num_classes,
                    **self.attack.params,
                )
                rx = jnp.concatenate([rx[: self.study_extra], px])
                ry = jnp.concatenate([ry[: self.study_extra], py])
            x, y = jnp.concatenate([x, rx]), jnp.concatenate([y, ry])
            drop = jnp.concatenate([drop, rdrop])
        grad_fn = jax.grad(self._loss, has_aux=True)
        theta_axis = 0 if points.ndim == 2 else None
        grads, (losses_, updates) = jax.vmap(grad_fn, in_axes=(theta_axis, None, 0, 0, 0, None))(
            points, state.model_state, x, y, drop, hp
        )
        updates = jax.tree.map(
            lambda u: row_mean(u.reshape(w, -1)[: self.honest]).reshape(u.shape[1:]), updates
        )
        return grads, losses_, updates

    def _reference_gradient(self, state: State, key: Array, hp: HyperParams, data: Data) -> Array:
        """The server's own gradient ``[d]`` at ``θ``, on its root set (the ``reference_size``
        training examples of ``data["root_indices"]``, drawn once per run), clipped as the
        workers' are: what rules such as FLTrust weigh the received rows by."""
        k_flip, k_drop = jax.random.split(key)
        x, y = data_lib.gather_batches(
            k_flip, data["train_x"], data["train_y"], data["root_indices"][None], self.dataset,
            self.flip,
        )  # fmt: skip
        grad, _ = jax.grad(self._loss, has_aux=True)(
            state.theta, state.model_state, x[0], y[0], k_drop, hp
        )
        clip = self._clip()
        return clip.update(grad, clip.init(grad))[0]

    def _batches(self, keys: Array, rows: int, data: Data, partitioned: bool):
        """``rows`` workers' batches ``[rows, b, ...]``, labels and dropout keys, drawn from
        ``keys`` (index, flip, dropout): from each honest worker's partition when the data is
        split (``partitioned``), else IID. Each group of rows draws from its own keys, so the
        honest workers' batches do not depend on how many other rows there are."""
        k_idx, k_flip, k_drop = keys
        num_train = data["train_y"].shape[0]
        batch = self.config.batch_size
        if partitioned and "partition_table" in data:
            partition = (data["partition_table"], data["partition_lengths"])
            k_idx = jax.random.split(k_idx)[0]
            indices = data_lib.sample_indices(k_idx, rows, batch, num_train, partition)
        else:
            indices = data_lib.sample_indices(k_idx, rows, batch, num_train)
        indices = self.layout.rows(indices)
        x, y = data_lib.gather_batches(
            k_flip, data["train_x"], data["train_y"], indices, self.dataset, self.flip
        )
        return x, y, jax.random.split(k_drop, rows)

    @property
    def flip(self) -> bool:
        """Random horizontal flips of the training images (the dataset's default)."""
        return self.dataset.flip and not self.config.no_transform

    def _gradient_points(self, state: State, stages: Stages, hp: HyperParams) -> Array:
        """Where the gradients are taken: ``θ`` ``[d]``, or the Nesterov look-ahead along the
        composition's momentum: shared ``[d]``, or one point per row ``[w, d]`` when the workers
        keep their own momentum (rows without one use ``θ``). With Nesterov traced, the flag
        ``hp.structure["nesterov"]`` chooses between the look-ahead points and ``θ``."""
        if not (self.config.momentum_nesterov or self.traced.nesterov):
            return state.theta
        points = self._lookahead_points(state, stages, hp)
        if self.traced.nesterov:
            return jnp.where(hp.structure["nesterov"], points, state.theta)
        return points

    def _lookahead_points(self, state: State, stages: Stages, hp: HyperParams) -> Array:
        """The Nesterov look-ahead points ``θ - γ β m`` (:meth:`_gradient_points`)."""
        lr = stages.schedule(state.step)
        velocity = stages.composition.velocity(
            state.worker_state, state.aggregator_state, state.server_state
        )
        if velocity.ndim == 1:
            return transforms.lookahead(state.theta, velocity, lr, hp.momentum)
        honest = transforms.lookahead(state.theta, velocity, lr, hp.momentum)
        poisoner_velocity = transforms.velocity(state.poisoner_state)
        poisoners = self.grad_workers - self.sampled
        if poisoner_velocity is not None and poisoners:
            tail = transforms.lookahead(state.theta, poisoner_velocity, lr, hp.momentum)
        else:
            tail = jnp.broadcast_to(state.theta, (poisoners, self.dim))
        extra = jnp.broadcast_to(state.theta, (self.study_extra, self.dim))
        return jnp.concatenate([honest, extra, tail])

    # ------------------------------------------------------------------------------------------ #
    # One step

    def step(self, state: State, hp: HyperParams, data: Data) -> tuple[State, dict[str, Array]]:
        """One synchronous step of Byzantine SGD; returns the new state and the study metrics."""
        key, k_grad, k_attack, k_rule = jax.random.split(state.key, 4)
        rule, reference = self._rule_and_reference(state, hp, data, k_rule)
        stages = self.stages(hp)
        sub = self._submissions(state, stages, hp, data, k_grad)
        return self._conclude(state, stages, hp, sub, rule, reference, key, k_attack, k_rule)

    def _rule_and_reference(self, state: State, hp: HyperParams, data: Data, k_rule: Array):
        """The rule, bound to the server's reference gradient when it reads one (FLTrust)."""
        if not self.rule.needs_reference:
            return self.rule, None
        reference = self._reference_gradient(state, jax.random.fold_in(k_rule, 1), hp, data)
        return self.rule.with_reference(reference), reference

    def _submissions(
        self, state: State, stages: Stages, hp: HyperParams, data: Data, key: Array
    ) -> Submissions:
        """The gradients at ``θ`` (or the look-ahead points) and what the workers send."""
        h = self.honest
        points = self._gradient_points(state, stages, hp)
        grads, losses_, updates = self._gradients(state, points, key, hp, data)
        grads, _ = stages.clip.update(grads, stages.clip.init(state.theta))
        grads = self.layout.rows(grads)
        chex.assert_shape(grads, (self.grad_workers, self.dim))
        previous = {"previous_aggregate": state.aggregator_state.previous}
        sent, worker_state = stages.composition.worker.update(
            grads[:h], state.worker_state, state.theta, **previous
        )
        poisoned, poisoner_state = stages.poisoner.update(
            grads[self.sampled :], state.poisoner_state, state.theta, **previous
        )
        return Submissions(
            sampled=grads[: self.sampled],
            loss=row_mean(losses_[: self.sampled, None])[0],
            model_updates=updates,
            honest=sent,
            poisoned=poisoned,
            worker_state=worker_state,
            poisoner_state=poisoner_state,
        )

    def _conclude(
        self,
        state: State,
        stages: Stages,
        hp: HyperParams,
        sub: Submissions,
        rule: Any,
        reference: Array | None,
        key: Array,
        k_attack: Array,
        k_rule: Array,
    ) -> tuple[State, dict[str, Array]]:
        """The attack, the rule, the server's update and the study, from the submissions."""
        f = self.byzantine
        # attacks, rules and metrics read whole columns: coordinates split over the devices
        honest = self.layout.columns(sub.honest)
        poisoned = self.layout.columns(sub.poisoned)
        byzantine = self._byzantine(honest, poisoned, k_attack, hp, rule, state.attack_drift)
        chex.assert_shape(byzantine, (f, self.dim))
        received = self.layout.columns(jnp.concatenate([honest, byzantine], axis=0))
        aggregate, aggregator_state = stages.aggregator.update(
            received, state.aggregator_state, key=k_rule, reference=reference
        )
        aggregate = self.layout.replicated(aggregate)
        aggregator_state = aggregator_state._replace(previous=aggregate)
        chex.assert_shape(aggregate, (self.dim,))
        update, server_state = stages.composition.server.update(
            aggregate, state.server_state, state.theta
        )
        study, past = metrics_lib.study(
            sampled=sub.sampled,
            honest=honest,
            byzantine=byzantine,
            aggregate=aggregate,
            accepted=aggregator_state.accepted if self.rule.selects else None,
            loss=sub.loss,
            l2_from_origin=jnp.linalg.norm(state.theta - state.theta0),
            learning_rate=stages.schedule(state.step),
            past=state.past,
            step=state.step,
            momentum=hp.momentum,
            byzantine_participants=f,
        )
        rows = self.layout.rows
        new_state = state.replace(
            theta=optax.apply_updates(state.theta, update),
            model_state={**state.model_state, **sub.model_updates},
            worker_state=jax.tree.map(rows, sub.worker_state),
            poisoner_state=jax.tree.map(rows, sub.poisoner_state),
            aggregator_state=aggregator_state,
            server_state=server_state,
            past=past,
            attack_drift=self._drift(state.attack_drift, aggregate, honest),
            step=state.step + 1,
            key=key,
        )
        return new_state, study

    def _byzantine(
        self, honest: Array, poisoned: Array, key: Array, hp: HyperParams, rule: Any, drift: Array
    ) -> Array:
        """The ``[f, d]`` Byzantine rows: the poisoned workers' submissions, or the attack's
        (an attack that evaluates the rule sees the server's, its reference gradient bound; one
        with a memory, the ``drift`` it has caused)."""
        if self.byzantine == 0:
            return jnp.zeros((0, self.dim), honest.dtype)
        if self.poisoning:
            return poisoned
        if self.traced.attack:
            return moment_attack(honest, self.byzantine, hp.structure)
        if self.traced.switch:
            return self._switched_attack(honest, key, hp, rule)
        return self.attack(
            honest,
            self.byzantine,
            key=key,
            rule=rule,
            f_decl=self.config.nb_decl_byz,
            **({"drift": drift} if self.remembers else {}),
            **hp.attack,
        )

    def _drift(self, drift: Array, aggregate: Array, honest: Array) -> Array:
        """The deviation an attack with a memory ``m`` has caused, ``e_t = m e_{t-1} + (F_t -
        mu_t)`` (aggregate minus honest mean; non-finite entries of a failed aggregate count 0).
        ``m`` is static: only ``factor`` is a traced attack parameter."""
        if not self.remembers:
            return drift
        memory = self.attack.params["memory"]
        caused = aggregate - row_mean(honest)
        return memory * drift + jnp.where(jnp.isfinite(caused), caused, 0.0)

    def _switched_attack(self, honest: Array, key: Array, hp: HyperParams, rule: Any) -> Array:
        """The rows of the attack switch's branch ``hp.structure["attack_branch"]``
        (:mod:`jaxbyz.structure`); a branch with a fixed factor takes ``hp.attack["factor"]``.
        Under ``vmap`` the index must be shared by the batch
        (:class:`jaxbyz.driver.Driver` keeps it outside), or every branch is computed and one
        selected."""
        from jaxbyz.structure import switch_attacks

        def branch(attack: Any, traced_factor: bool) -> Callable[[Array, Array], Array]:
            traced = {"factor": hp.attack["factor"]} if traced_factor else {}

            def rows(honest: Array, key: Array) -> Array:
                f_decl = self.config.nb_decl_byz
                return attack(honest, self.byzantine, key=key, rule=rule, f_decl=f_decl, **traced)

            return rows

        branches = [branch(*built) for built in switch_attacks(self.traced.switch)]
        index = jnp.asarray(hp.structure["attack_branch"], jnp.int32)
        return jax.lax.switch(index, branches, honest, key)

    def _moment_coefficients(self, hp: HyperParams) -> tuple[Any, Any]:
        """``(a, b)`` of a moment-family attack ``mu + a sigma + b mu`` (:mod:`jaxbyz.structure`):
        traced from ``hp.structure`` when the program traces the attack, else from the attack's
        parameters (its ``factor`` possibly a traced override in ``hp.attack``)."""
        if self.traced.attack:
            return hp.structure["attack_std"], hp.structure["attack_mean"]
        params = self.attack.params
        factor = hp.attack.get("factor", params["factor"])
        signed = -factor if params.get("negative", False) else factor
        return (signed, 0.0) if self.attack.name == "little" else (0.0, -signed)

    # ------------------------------------------------------------------------------------------ #
    # Evaluation and runs

    def evaluate(self, state: State, data: Data) -> Array:
        """The criterion (top-k accuracy) on the test set, BatchNorm in inference mode and no
        dropout: the whole test set by default; with ``--batch-size-test B`` and
        ``--batch-size-test-reps R``, the first ``B x R`` test examples taken cyclically in
        batches of ``B`` (the paper's evaluation)."""
        x, y = data["test_inputs"], data["test_y"]
        count, size, chunks = self._evaluation_shape(y.shape[0])
        variables = {"params": self.unravel(state.theta), **state.model_state}
        correct_fn = losses.criterion(self.config.criterion, **self.config.criterion_args)

        def correct(args):
            xb, yb, valid = args
            outputs = self.model.apply(variables, xb, train=False)
            return jnp.sum(correct_fn(outputs, yb) & valid)

        valid = (jnp.arange(chunks * size) < count).reshape(chunks, size)
        if count == y.shape[0]:  # the whole test set, in order: padded into equal chunks
            pad = chunks * size - count
            xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
            xs, ys = xs.reshape(chunks, size, *x.shape[1:]), jnp.pad(y, (0, pad))
        else:  # B x R examples, cyclically
            index = jnp.arange(chunks * size) % y.shape[0]
            xs, ys = x[index].reshape(chunks, size, *x.shape[1:]), y[index]
        parts = jax.lax.map(correct, (xs, ys.reshape(chunks, size), valid))
        return jnp.sum(parts) / count

    several_models = False  # a graph's nodes each hold a model (``evaluate_nodes``)

    def evaluate_nodes(self, state: State, data: Data) -> Array | None:
        """``[3]``: the min, mean and max accuracy over a run's several models (a graph's honest
        nodes), or None for a run with one model."""
        return None

    def _evaluation_shape(self, test_size: int) -> tuple[int, int, int]:
        """(examples evaluated, examples per forward pass, forward passes)."""
        c = self.config
        if c.batch_size_test is None and c.batch_size_test_reps is None:
            count = test_size
            size = min(EVAL_CHUNK.get(c.model, DEFAULT_EVAL_CHUNK), count)
        else:
            size = c.batch_size_test or PAPER_TEST_BATCH
            count = size * (c.batch_size_test_reps or PAPER_TEST_BATCH)
        return count, size, math.ceil(count / size)

    def steps(self, state: State, hp: HyperParams, data: Data, length: int):
        """``length`` steps as one ``lax.scan``: the new state and the per-step study metrics."""
        return jax.lax.scan(lambda s, _: self.step(s, hp, data), state, None, length=length)

    def evaluation_steps(self) -> np.ndarray:
        """The steps after which the model is evaluated (:func:`evaluation_steps`)."""
        return evaluation_steps(self.config.nb_steps, self.config.evaluation_delta)

    def run(
        self, key: Array, hparams: HyperParams | dict | None = None, data: Data | None = None
    ) -> dict[str, Any]:
        """The whole run as one traced program (pure in ``key``): accuracies and study metrics.

        ``data`` defaults to the simulation's device arrays. Under ``jit``, arrays a function
        closes over are embedded in the program as constants (slow to compile for a real
        dataset): pass ``data=sim.arrays`` as an argument of the jitted function instead.
        """
        hp = self.hyperparams(hparams)
        data = self.arrays if data is None else data
        state = self.init(key)
        evaluations = self.evaluation_steps()
        nodes = self.several_models

        def evaluate(s):
            accuracy = self.evaluate(s, data)
            return (accuracy, self.evaluate_nodes(s, data)) if nodes else (accuracy, accuracy[None])

        accuracies, node_accuracies = [], []
        if evaluations[0] == 0:
            accuracy, node_accuracy = evaluate(state)
            accuracies.append(accuracy[None])
            node_accuracies.append(node_accuracy[None])
        lengths = np.diff(evaluations) if evaluations[0] == 0 else evaluations
        lengths = [int(n) for n in lengths]
        studies = []
        full = sum(1 for n in lengths if n == lengths[0])
        if full > 1:

            def body(s, _):
                s, study = self.steps(s, hp, data, lengths[0])
                return s, (study, evaluate(s))

            state, (study, (accs, node_accs)) = jax.lax.scan(body, state, None, length=full)
            accuracies.append(accs)
            node_accuracies.append(node_accs)
            studies.append(jax.tree.map(lambda v: v.reshape(-1), study))
            lengths = lengths[full:]
        for length in lengths:
            state, study = self.steps(state, hp, data, length)
            accuracy, node_accuracy = evaluate(state)
            accuracies.append(accuracy[None])
            node_accuracies.append(node_accuracy[None])
            studies.append(study)
        study = {k: jnp.concatenate([s[k] for s in studies]) for k in metrics_lib.NAMES}
        result = {"accuracy": jnp.concatenate(accuracies), "study": study, "theta": state.theta}
        if nodes:  # [E, 3]: min, mean and max over a graph's honest nodes
            result["node_accuracy"] = jnp.concatenate(node_accuracies)
        return result


def evaluation_steps(nb_steps: int, evaluation_delta: int) -> np.ndarray:
    """The steps after which a run evaluates its model: 0, every ``evaluation_delta``, and the
    last; only the last with ``evaluation_delta = 0``."""
    if evaluation_delta == 0:
        return np.asarray([nb_steps])
    return np.asarray([*range(0, nb_steps, evaluation_delta), nb_steps])


def root_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """The server's root set: ``size`` distinct training examples drawn from ``seed`` (fixed
    for the run), for rules that read the server's own gradient."""
    if size > num_train:
        raise ValueError(
            f"root_size={size} (the server's clean examples) exceeds the {num_train} training "
            f"examples; fix: --gar-args root_size:{min(100, num_train)}"
        )
    rng = np.random.default_rng([seed % 2**32, 0x5EED])
    return np.sort(rng.choice(num_train, size, replace=False)).astype(np.int32)


def _device_arrays(
    config: Config, dataset: data_lib.Dataset, layout: Layout, reference_size: int = 0
) -> dict[str, Array]:
    """The data sets on the device (replicated on every device of a mesh), with the server's
    root set when the rule reads the server's gradient (``reference_size`` examples)."""
    arrays = data_lib.host_arrays(dataset)
    if reference_size:
        arrays["root_indices"] = root_indices(len(dataset.train_y), reference_size, config.seed)
    partition = data_lib.honest_partition(
        dataset.train_y, config.nb_honests, config.partition, config.seed, config.dirichlet_alpha
    )
    if partition is not None:  # --partition (or --dirichlet-alpha): the honest workers' shares
        arrays["partition_table"], arrays["partition_lengths"] = partition
    if layout.mesh is not None:
        return layout.place(arrays)
    return {name: jnp.asarray(value) for name, value in arrays.items()}


def moment_attack(honest: Array, f: int, structure: dict[str, Array]) -> Array:
    """The moment family's ``f`` rows ``mu + a sigma + b mu`` (:mod:`jaxbyz.structure`), ``a``
    and ``b`` traced (``structure["attack_std"]``, ``["attack_mean"]``); a zero coefficient's
    term is left out (not multiplied: ``0 x inf`` would be NaN), so ``little`` and ``empire``
    give their own rows exactly."""
    mu, sigma = mean_std(honest)
    return broadcast_row(
        moment_row(mu, sigma, structure["attack_std"], structure["attack_mean"]), f
    )


def moment_row(mu: Array, sigma: Array, a: Array | float, b: Array | float) -> Array:
    """``mu + a sigma + b mu``, a zero coefficient's term left out (``0 x inf`` would be NaN)."""
    a, b = jnp.asarray(a, mu.dtype), jnp.asarray(b, mu.dtype)
    row = mu + jnp.where(a != 0, a * sigma, 0.0)
    return row + jnp.where(b != 0, b * mu, 0.0)


def make_simulation(
    config: Config,
    dataset: data_lib.Dataset | None = None,
    mesh: Mesh | None = None,
    traced: Traced = STATIC,
) -> Simulation:
    """Validate ``config``, load the data (unless given) and build the static simulation.

    With a ``mesh`` (:func:`jaxbyz.sharding.worker_mesh`), the worker axis is split over its
    devices (see :mod:`jaxbyz.sharding`); pass inputs through ``simulation.layout.place``.
    ``traced``: the structure choices the program reads from ``HyperParams.structure`` instead
    of ``config`` (:mod:`jaxbyz.structure`; a sweep sets those its grouped runs vary in).
    """
    _check_traced(config, traced)
    rule, attack = check_config(config)
    if mesh is not None and (
        config.topology is not None or config.participants < config.nb_workers
    ):
        raise ValueError(
            "--shard-workers with --topology or --clients-per-round: the worker axis is split "
            "over devices only for synchronous rounds of every worker; fix: drop --shard-workers"
        )
    layout = Layout(mesh)
    if dataset is None:
        dataset = data_lib.load_dataset(config.dataset, config.data_dir)
    model = models.get(config.model, dataset.num_classes, **config.model_args)
    dummy = jnp.zeros((1, *dataset.input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
    flat, unravel = ravel_pytree(params)
    sim = simulation_class(config)(
        config=config,
        dataset=dataset,
        rule=rule,
        attack=attack,
        model=model,
        unravel=unravel,
        dim=int(flat.shape[0]),
        model_state_shape={k: v for k, v in shapes.items() if k != "params"},
        bound=rule.upper_bound(config.nb_workers, config.nb_decl_byz, int(flat.shape[0])),
        arrays={},
        layout=layout,
        traced=traced,
    )
    if layout.mesh is None:  # split over devices, each holds a part: not checked here
        check_memory(sim)
    arrays = _device_arrays(config, dataset, layout, rule.reference_size)
    return dataclasses.replace(sim, arrays=arrays)


def simulation_class(config: Config) -> type[Simulation]:
    """The simulation a configuration runs: synchronous SGD with a server, federated rounds
    (:mod:`jaxbyz.federated`) or learning on a graph (:mod:`jaxbyz.decentralized`)."""
    if config.topology is not None:
        from jaxbyz.decentralized import DecentralizedSimulation

        return DecentralizedSimulation
    if config.federated:
        from jaxbyz.federated import FederatedSimulation

        return FederatedSimulation
    return Simulation


def _check_traced(config: Config, traced: Traced) -> None:
    """Refuse tracing a choice ``config`` cannot take as a traced value."""
    from jaxbyz.structure import traceable

    able = traceable(config)
    for name in ("placement", "nesterov", "attack", "switch"):
        if getattr(traced, name) and not getattr(able, name):
            raise ValueError(
                f"traced={traced}: the {name} of this configuration cannot be traced (attack "
                f"{config.attack!r} {config.attack_args}); fix: leave {name} static"
            )
    if traced.switch:
        from jaxbyz.structure import switch_attacks

        built = switch_attacks(traced.switch)
        poisoning = [a.name for a, _ in built if a.poison is not None]
        if poisoning:
            raise ValueError(
                f"traced.switch: {poisoning} poison the data (their workers compute gradients), "
                "not a branch of an attack switch; fix: give them programs of their own"
            )


def make_train(
    config: Config,
    dataset: data_lib.Dataset | None = None,
    mesh: Mesh | None = None,
    traced: Traced = STATIC,
) -> Callable[..., dict[str, Any]]:
    """``train(key, hparams=None, data=None) -> {"accuracy": [E], "study": {name: [T]}, "theta"}``.

    A pure function of ``key``: ``jax.jit(jax.vmap(train))(keys)`` runs several seeds as one
    program. ``hparams`` overrides traced hyper-parameters (:class:`jaxbyz.config.HyperParams`
    fields: ``learning_rate``, ``momentum``, ``dampening``, ``l2_regularize``, ...; ``attack``: a
    dict of attack parameters). For a real dataset pass its device arrays, ``train.data``, as an
    argument rather than letting the function close over them (closed-over arrays are compiled
    in as constants): ``jax.jit(jax.vmap(train, in_axes=(0, None, None)))(keys, None,
    train.data)``. With ``traced`` (:class:`jaxbyz.structure.Traced`), the placement, Nesterov
    or the moment attack are read from ``hparams.structure``: ``HyperParams.from_config`` of
    each configuration gives them, and runs differing in them ``vmap`` together. An attack
    switch's branch (``structure["attack_branch"]``) should not be batched: under ``vmap`` a
    batched index computes every branch (:class:`jaxbyz.driver.Driver` keeps it outside).
    """
    sim = make_simulation(config, dataset, mesh, traced)

    def train(key: Array, hparams: HyperParams | dict | None = None, data: Data | None = None):
        return sim.run(key, hparams, data)

    train.data = sim.arrays
    train.simulation = sim
    return train
