"""The train step, the optimizer and their shardings (prediction: `Predictor`)."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
import optax

from genrec import models, partitioning
from genrec.predictor import Predictor



@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # pure nested dict of arrays
  opt_state: Any


def learning_rate_schedule(num_train_steps: int, learning_rate: float = 1e-3,
                           schedule: str = 'inverse_sqrt', warmup_steps: int = 1000,
                           final_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup, then 'inverse_sqrt' (T5), 'cosine' or 'constant'."""
  warmup_steps = max(1, warmup_steps)
  if schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps, max(num_train_steps, warmup_steps + 1),
        end_value=learning_rate * final_fraction)
  if schedule not in ('inverse_sqrt', 'constant'):
    raise ValueError(f"Unknown schedule {schedule!r}; use 'inverse_sqrt', 'cosine' or "
                     "'constant'.")

  def fn(step):
    step = jnp.asarray(step, jnp.float32) + 1
    warm = jnp.minimum(1.0, step / warmup_steps)
    decay = jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    return learning_rate * warm * (decay if schedule == 'inverse_sqrt' else 1.0)
  return fn


def make_optimizer(num_train_steps: int, name: str = 'adamw', learning_rate: float = 1e-3,
                   schedule: str = 'inverse_sqrt', warmup_steps: int = 1000,
                   weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   clip_norm: float | None = 1.0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW or Adafactor with a warmup schedule and global-norm clipping.

  Returns:
    (the optimizer, its learning-rate schedule for logging).
  """
  lr = learning_rate_schedule(num_train_steps, learning_rate, schedule, warmup_steps)
  if name == 'adamw':
    tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == 'adafactor':
    tx = optax.adafactor(lr, weight_decay_rate=weight_decay or None)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; use 'adamw' or 'adafactor'.")
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx, lr


def param_and_opt_specs(abstract_params: nnx.State, tx: optax.GradientTransformation):
  """Mesh PartitionSpecs of the parameters (from their logical axes) and of the
  optimizer state (a parameter's moments shard like it, counters replicate).

  Returns:
    (abstract params as a pure dict, their specs, abstract optimizer state,
    its specs).
  """
  param_specs = partitioning.param_partition_specs(abstract_params)
  abstract_params = nnx.to_pure_dict(abstract_params)
  abstract_opt, opt_specs = opt_state_specs(abstract_params, param_specs, tx)
  return abstract_params, param_specs, abstract_opt, opt_specs


def opt_state_specs(abstract_params, param_specs, tx: optax.GradientTransformation):
  """(abstract optimizer state, its PartitionSpecs) for pure-dict parameters
  with `param_specs`: a parameter's moments shard like it, counters replicate."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Adafactor's factored moments are a parameter's row and column statistics
  # (not its shape): those replicate.
  opt_specs = optax.tree_map_params(
      tx, lambda leaf, spec, param: spec if leaf.shape == param.shape else
      partitioning.logical_to_mesh_spec(None), abstract_opt, param_specs, abstract_params,
      transform_non_params=lambda _: partitioning.logical_to_mesh_spec(None),
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return abstract_opt, opt_specs


class _WithConstants:
  """A jitted step with the trainer's constants bound as its last argument
  (called and lowered like the jitted function without it)."""

  def __init__(self, fn, constants):
    self.fn, self.constants = fn, constants

  def __call__(self, *args):
    return self.fn(*args, self.constants)

  def lower(self, *args):
    return self.fn.lower(*args, self.constants)


class Trainer(Predictor):
  """A `Predictor` with the optimizer and the jitted, sharded train step.

  `constants`: arrays every step's loss reads besides its batch (replicated
  on the mesh, merged into each batch inside the step), e.g. the catalog's
  identifier tokens for `models.ItemSidParallel`'s catalog loss.
  """

  def __init__(self, config: models.ModelConfig, tx: optax.GradientTransformation,
               mesh: Mesh, learning_rate_fn: optax.Schedule | None = None,
               constants: dict | None = None):
    super().__init__(config, mesh)
    self.tx = tx
    self.lr_fn = learning_rate_fn
    # The Predictor's abstract parameters and specs; only the optimizer's are new.
    abstract_opt, opt_specs = opt_state_specs(self.abstract_params, self.param_specs, tx)
    specs = TrainState(step=partitioning.logical_to_mesh_spec(None), params=self.param_specs,
                       opt_state=opt_specs)
    self.state_shardings = partitioning.named_shardings(specs, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params,
                   opt_state=abstract_opt), self.state_shardings)
    # One sharding for every leaf of the batch dict: split the batch dimension.
    self.batch_shardings = partitioning.batch_sharding(mesh, 1)
    repl = partitioning.replicated(mesh)
    self._init = jax.jit(self._init_fn, out_shardings=self.state_shardings)
    constants = jax.device_put(dict(constants or {}), repl)
    self.train_step = _WithConstants(jax.jit(
        self._train_step, in_shardings=(self.state_shardings, self.batch_shardings, repl, repl),
        out_shardings=(self.state_shardings, repl), donate_argnums=0), constants)
    # Several steps in one call (a scan over stacked batches), for small models
    # whose steps are shorter than the host's dispatch of one.
    self.train_steps = _WithConstants(jax.jit(
        self._train_steps,
        in_shardings=(self.state_shardings, partitioning.stacked_batch_sharding(mesh), repl,
                      repl),
        out_shardings=(self.state_shardings, repl), donate_argnums=0), constants)

  # -- init -----------------------------------------------------------------
  def _init_fn(self, rng):
    params = models.init_params(self.config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  def init_state(self, seed: int) -> TrainState:
    """Fresh parameters and optimizer state, created sharded on the mesh."""
    key = jax.random.key(seed)
    compiled = self._init.lower(key).compile(
        compiler_options=models.ONE_SHOT_COMPILE_OPTIONS)
    return compiled(key)

  # -- train ----------------------------------------------------------------
  def loss_fn(self, params, batch, dropout_rng, deterministic=False):
    model = nnx.merge(self.graphdef, params)
    return model.loss(batch, deterministic=deterministic, rngs=nnx.Rngs(dropout=dropout_rng))

  def _train_step(self, state: TrainState, batch, rng, constants=None):
    dropout_rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
        state.params, {**batch, **(constants or {})}, dropout_rng)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **aux}
    if self.lr_fn is not None:
      metrics['learning_rate'] = jnp.asarray(self.lr_fn(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _train_steps(self, state: TrainState, batches, rng, constants=None):
    """`_train_step` over batches stacked [steps, batch, ...]: the same states
    (dropout keys fold in each step's count), the last step's metrics."""
    state, metrics = jax.lax.scan(lambda s, b: self._train_step(s, b, rng, constants), state,
                                  batches)
    return state, jax.tree.map(lambda m: m[-1], metrics)


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
