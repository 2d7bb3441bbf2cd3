"""The jitted training step, split in two so gradient accumulation is a plain
loop over micro-batches of any bucket shape:

    acc = zeros()                       # gradient sums in the parameters' layout
    for micro in batches:               # each compiled once per bucket shape
        acc = accumulate(params, frozen, acc, micro)
    params, opt_state, metrics = apply(params, opt_state, acc)

or, with one micro-batch per step, `step(params, frozen, opt_state, batch)`
(the same computation as one program, without the gradient-sum buffer).

`accumulate` adds the gradient of the *summed* token loss; `apply` divides
by the token count of the whole global batch (all micro-batches, all
devices), so the update is the per-token mean the reference optimises
whatever the accumulation and device count. A non-finite loss or gradient
norm skips the update (parameters and optimiser state pass through), as
does a step with no target tokens. Buffers are donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tempura_jax.data.batching import model_inputs
from tempura_jax.data.config import DataConfig
from tempura_jax.data.processor import max_frame_patches
from tempura_jax.model.vision_geometry import config_bounds
from tempura_jax.ops.block_local import (
    Aligned,
    Bound,
    round_bound,
    static_bound,
    violation,
    worthwhile,
)
from tempura_jax.peft.adapters import training_dropout
from tempura_jax.sharding import batch_spec, layout_rules, like_params, named, variable_specs
from tempura_jax.train.config import TrainConfig
from tempura_jax.train.loss import lm_loss_sum
from tempura_jax.train.optim import trainable_filter

State = Any  # an nnx.State of arrays


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Accum:
    grads: State
    loss_sum: jax.Array  # float32 ()
    count: jax.Array  # int32 (): target tokens
    tokens: jax.Array  # int32 (): non-padding tokens
    patches: jax.Array  # int32 (): non-padding vision patches


def batch_shardings(batch: dict[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """Every array splits its batch axis over (data, fsdp); position ids carry
    the batch on axis 1."""
    return {
        k: NamedSharding(mesh, batch_spec(v.ndim, 1 if k == "position_ids" else 0))
        for k, v in batch.items()
    }


@dataclasses.dataclass
class StepFns:
    """Compiled pieces of one training step for a model split into
    (graphdef, trainable, frozen) and an optax transformation."""

    graphdef: Any
    tx: optax.GradientTransformation
    param_shardings: State
    opt_shardings: Any
    loss_chunk: int | None
    grad_shardings: State | None = None  # default: the parameters' layout
    # Static: rows are one sample then padding (bucketed), not packed rows.
    right_padded: bool = True
    # Static (window, frame) segment-length bounds every batch is checked
    # against on the host (`check_vision_bounds`): attention runs block-local
    # within them. (None, None): dense vision attention.
    vision_bounds: tuple[Bound | None, Bound | None] = (None, None)
    # Static: every sample in a packed row is at most this many tokens
    # (`text_bound`; `check_text_bound` on the host): the decoder attends
    # block-locally. None: dense causal attention over the row.
    text_bound: Bound | None = None
    _bounded: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        graphdef: Any,
        train: State,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        layout: str,
        loss_chunk: int | None,
        right_padded: bool = True,
        vision_bounds: tuple[Bound | None, Bound | None] = (None, None),
        text_bound: Bound | None = None,
    ) -> StepFns:
        """Shardings from the parameters' logical axes under a layout: the
        optimiser state follows the parameters it belongs to. `right_padded`:
        False for packed rows (`data.packing`)."""
        param_rules, opt_rules = layout_rules(layout)
        param_sh = named(variable_specs(train, mesh, param_rules), mesh)
        # Gradient sums live in the optimiser's layout: under zero2 they are
        # reduce-scattered over fsdp like the optimiser state (ZeRO-2).
        grad_sh = named(variable_specs(train, mesh, opt_rules), mesh)
        opt_shapes = jax.eval_shape(tx.init, train)
        opt_specs = like_params(opt_shapes, train, variable_specs(train, mesh, opt_rules))
        return cls(
            graphdef,
            tx,
            param_sh,
            named(opt_specs, mesh),
            loss_chunk,
            grad_sh,
            right_padded,
            vision_bounds,
            text_bound,
        )

    def __post_init__(self):
        grads = self.grad_shardings or self.param_shardings
        acc_shardings = Accum(grads, *([_replicated(self.param_shardings)] * 4))
        self.zeros = jax.jit(self._zeros, out_shardings=acc_shardings)
        self.accumulate = jax.jit(self._accumulate, donate_argnums=2, out_shardings=acc_shardings)
        self.apply = jax.jit(
            self._apply,
            donate_argnums=(0, 1),
            out_shardings=(self.param_shardings, self.opt_shardings, None),
        )
        self.step = jax.jit(
            self._step,
            donate_argnums=(0, 2),
            out_shardings=(self.param_shardings, self.opt_shardings, None),
        )
        self.init_opt = jax.jit(self.tx.init, out_shardings=self.opt_shardings)
        self.loss = jax.jit(self._loss)

    def bounded(self, bounds: tuple[Bound | None, Bound | None]) -> StepFns:
        """This step with other static vision bounds: its own jitted programs
        (kept for reuse), the same shardings and optimiser."""
        if bounds == self.vision_bounds:
            return self
        if bounds not in self._bounded:
            self._bounded[bounds] = dataclasses.replace(self, vision_bounds=bounds)
        return self._bounded[bounds]

    def _loss(self, train: State, frozen: State, batch: dict) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(self.graphdef, train, frozen)
        inputs = model_inputs(batch, self.right_padded)
        window, frame = self.vision_bounds
        vision = dataclasses.replace(inputs.vision, window_bound=window, frame_bound=frame)
        inputs = dataclasses.replace(inputs, vision=vision, text_bound=self.text_bound)
        with training_dropout(batch):  # adapter dropout, if any: training steps only
            hidden = model.forward(inputs)
        # The head stays in its master dtype: the loss casts it per block.
        return lm_loss_sum(hidden, model.head_weight(), batch["labels"], self.loss_chunk)

    def _zeros(self, train: State) -> Accum:
        z = jnp.zeros((), jnp.int32)
        return Accum(jax.tree.map(jnp.zeros_like, train), jnp.zeros((), jnp.float32), z, z, z)

    def _accumulate(self, train: State, frozen: State, acc: Accum, batch: dict) -> Accum:
        def f(t):
            return self._loss(t, frozen, batch)

        (loss_sum, count), grads = jax.value_and_grad(f, has_aux=True)(train)
        return Accum(
            grads=jax.tree.map(jnp.add, acc.grads, grads),
            loss_sum=acc.loss_sum + loss_sum,
            count=acc.count + count,
            tokens=acc.tokens + jnp.sum(batch["segment_ids"] > 0).astype(jnp.int32),
            patches=acc.patches + jnp.sum(batch["frame_segments"] >= 0).astype(jnp.int32),
        )

    def _step(self, train: State, frozen: State, opt_state: Any, batch: dict):
        """`accumulate` then `apply` on one micro-batch as one program: without
        accumulation there is no gradient-sum buffer (a parameter-sized fp32
        copy: 15 GB at 3B), and adding the zeros folds away."""
        acc = self._accumulate(train, frozen, self._zeros(train), batch)
        return self._apply(train, opt_state, acc)

    def _apply(self, train: State, opt_state: Any, acc: Accum):
        count = jnp.maximum(acc.count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / count, acc.grads)
        grad_norm = optax.tree_utils.tree_norm(grads)
        loss = acc.loss_sum / count
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        update = finite & (acc.count > 0)

        def step(operands):
            t, o = operands
            updates, o = self.tx.update(grads, o, t)
            return optax.apply_updates(t, updates), o

        train, opt_state = jax.lax.cond(update, step, lambda x: x, (train, opt_state))
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "target_tokens": acc.count,
            "tokens": acc.tokens,
            "patches": acc.patches,
            "finite": finite,
            "updated": update,
        }
        return train, opt_state, metrics


def check_vision_bounds(batch: dict[str, Any], bounds: tuple[Bound | None, Bound | None]) -> None:
    """A host batch must keep the bounds the step was built with: each window
    and frame one contiguous run of at most its bound (what makes the
    block-local vision attention exact)."""
    for key, bound in zip(("window_segments", "frame_segments"), bounds, strict=True):
        if bound is not None and (found := violation(batch[key], bound)):
            raise ValueError(f"batch {key}: {found}, the step was built for runs <= {bound}")


def text_bound(data: DataConfig) -> Bound | None:
    """The decoder's static bound for a run: packed rows longer than a sample
    (data.pack_seq_len > max_seq_len) hold samples of at most max_seq_len
    tokens, so each token's keys lie within that many before it. None where
    block-local would cost no less than the dense row (one sample per row)."""
    if not data.packing:
        return None
    bound = round_bound(data.max_seq_len)
    return bound if worthwhile(bound, data.row_tokens, causal=True) else None


def check_text_bound(batch: dict[str, Any], bound: Bound | None) -> None:
    """A host batch must keep the decoder's bound: each sample one run of at
    most `bound` tokens."""
    if bound is not None:
        ids = np.asarray(batch["segment_ids"])
        if found := violation(np.where(ids > 0, ids, -1), bound):
            raise ValueError(
                f"batch segment_ids: {found}, the step was built for samples <= {bound}"
            )


def batch_bounds(batch: dict[str, Any]) -> tuple[Bound | None, Bound | None]:
    """The tightest exact (window, frame) bounds of a host batch
    (`model.vision_bounds=batch`): aligned frames cost their own square."""
    return static_bound(batch["window_segments"]), static_bound(batch["frame_segments"])


def bound_code(bound: Bound | None) -> int:
    """A bound as one integer, to compare across processes: 0 none, -L aligned."""
    if bound is None:
        return 0
    return -bound.length if isinstance(bound, Aligned) else int(bound)


def agreed_bounds(codes: np.ndarray, mine: tuple, run: tuple) -> tuple:
    """The bounds every process steps with, from each one's `bound_code`s (one
    row per process): its own where all found the same pair, else the run's,
    which holds for every batch."""
    codes = np.asarray(codes)
    return mine if (codes == codes[0]).all() else run


def one_program(accum: int) -> bool:
    """Whether a step runs as `StepFns.step` (one micro-batch) rather than
    `accumulate` per micro-batch then `apply`."""
    return accum == 1


@dataclasses.dataclass
class TrainSplit:
    """A model split the way the trainer trains it: trainable and frozen
    states, the step's jitted pieces and the frozen part's shardings. The
    trainer and the ahead-of-time compiler (tempura_jax.aot) both build it."""

    train: State
    frozen: State
    fns: StepFns
    frozen_shardings: State

    @classmethod
    def build(
        cls, model: nnx.Module, cfg: TrainConfig, tx: optax.GradientTransformation, mesh: Mesh
    ) -> TrainSplit:
        graphdef, train, frozen = nnx.split(model, trainable_filter(cfg.optim, cfg.peft), ...)
        if not jax.tree.leaves(train):
            raise ValueError("every parameter is frozen: nothing to train")
        fns = StepFns.build(
            graphdef,
            train,
            tx,
            mesh,
            cfg.mesh.layout,
            cfg.model.loss_chunk or None,
            right_padded=not cfg.data.packing,  # packed rows hold several samples
            # Window and frame bounds from the config and the pixel budget: one
            # static pair for the run, which every batch is checked against.
            vision_bounds=config_bounds(model.config.vision, max_frame_patches(cfg.data.pixels)),
            text_bound=text_bound(cfg.data),
        )
        param_rules, _ = layout_rules(cfg.mesh.layout)
        frozen_sh = named(variable_specs(frozen, mesh, param_rules), mesh)
        return cls(train, frozen, fns, frozen_sh)

    def targets(self, variables: bool = False) -> tuple[State, State, Any]:
        """(trainable, frozen, optimiser state) as ShapeDtypeStructs with their
        shardings: restore targets, or (`variables`: inside the model's
        Variables, as the step takes them) the arguments of an AOT compile."""
        opt_shapes = jax.eval_shape(self.fns.tx.init, self.train)
        opt = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
            opt_shapes,
            self.fns.opt_shardings,
        )
        return (
            with_shardings(self.train, self.fns.param_shardings, variables),
            with_shardings(self.frozen, self.frozen_shardings, variables),
            opt,
        )


def with_shardings(state: nnx.State, shardings: Any, variables: bool = False) -> nnx.State:
    """Each Variable's shape and dtype with its sharding (`variables`: kept in
    the Variable)."""
    flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    flat = list(nnx.to_flat_state(state))
    if len(flat) != len(flat_sh):
        raise ValueError("sharding tree does not match the state")
    return nnx.from_flat_state(
        [
            (path, v.replace(sds) if variables else sds)
            for (path, v), sh in zip(flat, flat_sh, strict=True)
            for sds in [jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh)]
        ]
    )


def _replicated(param_shardings: State) -> NamedSharding:
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    return NamedSharding(mesh, PartitionSpec())
