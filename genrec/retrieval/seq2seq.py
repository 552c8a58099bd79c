"""The encoder-decoders of the retrieval application: (input tokens, target
tokens) pairs as model features, and their fixed-budget training (the
retrieval methods of `docgen` and the query generator of `pseudo_queries`)."""

from collections.abc import Callable
import dataclasses

from absl import logging
import jax
import numpy as np

from genrec import loop, models, partitioning, trainer


def pad(rows: list, width: int) -> np.ndarray:
  """Token rows, cut or zero-padded to `width`: int32 [len(rows), width]."""
  out = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    r = np.asarray(r)[:width]
    out[i, :len(r)] = r
  return out


def arrays(inputs: list, targets: list, input_len: int, target_len: int
           ) -> dict[str, np.ndarray]:
  """The model's training features from (input tokens, target tokens) pairs."""
  tgt = pad(targets, target_len)
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {'encoder_input_tokens': pad(inputs, input_len), 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': tgt, 'decoder_loss_weights': (tgt > 0).astype(np.int32)}


def train(workdir: str, name: str, arrays: dict[str, np.ndarray],
                  config: models.ModelConfig, optimizer_fn: Callable, mesh_fn: Callable,
                  num_train_steps: int, batch_size: int, seed: int, log_every_steps: int,
                  settings: dict, warm_start: Callable[[dict], dict] | None = None):
  """Trains an encoder-decoder on `arrays` (`arrays`) for a fixed
  budget, or restores its final checkpoint in `workdir`.

  `warm_start` maps the fresh parameters (a pure dict of host arrays) to the
  ones training starts from (pretrained weights); not called on a restore.

  Returns (trainer, mesh, state, training seconds, final loss).
  """
  mesh = mesh_fn()
  tx, lr_fn = optimizer_fn(num_train_steps)
  tr = trainer.Trainer(config, tx, mesh, lr_fn)
  n = len(arrays['encoder_input_tokens'])
  batcher = loop.EpochBatcher(n, batch_size, seed)
  logging.info('%s: %d training examples (%.1f epochs), %.2fM parameters, vocab %d', name,
               n, num_train_steps * batch_size / n,
               trainer.param_count(tr.abstract_state.params) / 1e6, config.vocab_size)
  rng = jax.random.key(seed + 1)

  def step_fn(state, step):
    idx = batcher.indices(step)[partitioning.host_slice(batch_size, mesh)]
    state, m = tr.train_step(
        state, partitioning.shard_batch({k: a[idx] for k, a in arrays.items()}, mesh), rng)
    return state, m['loss']
  settings = {**settings, 'model_config': dataclasses.asdict(config),
              'optimizer': loop.callable_settings(optimizer_fn), 'batch_size': batch_size,
              'seed': seed}

  def init():
    state = tr.init_state(seed)
    if warm_start is None:
      return state
    params = warm_start(jax.tree.map(np.array, jax.device_get(state.params)))
    return state.replace(params=jax.device_put(params, tr.state_shardings.params))
  state, train_s, loss = loop.train_fixed_budget(
      workdir, name, num_train_steps, batcher, tr.abstract_state, init, step_fn,
      log_every_steps, settings, legacy_settings=models.legacy_settings)
  return tr, mesh, state, train_s, loss
