import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import optax
import pytest

from genrec import layers, models, partitioning, trainer


def test_schedules_warm_up_then_decay():
  inv = trainer.learning_rate_schedule(1000, 1e-3, 'inverse_sqrt', warmup_steps=100)
  np.testing.assert_allclose(inv(0), 1e-5, rtol=1e-5)  # (step + 1) / warmup
  np.testing.assert_allclose(inv(99), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(inv(399), 1e-3 * np.sqrt(100 / 400), rtol=1e-5)
  cos = trainer.learning_rate_schedule(1000, 1e-3, 'cosine', warmup_steps=100)
  assert float(cos(100)) == pytest.approx(1e-3) and float(cos(1000)) == pytest.approx(0.0)
  const = trainer.learning_rate_schedule(1000, 1e-3, 'constant', warmup_steps=10)
  assert float(const(500)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match='Unknown schedule'):
    trainer.learning_rate_schedule(10, 1e-3, 'linear')


@pytest.mark.parametrize('name', ['adamw', 'adafactor'])
def test_optimizers_minimize_and_clip(name):
  tx, _ = trainer.make_optimizer(200, name=name, learning_rate=0.1, warmup_steps=1,
                                 clip_norm=1.0, weight_decay=0.0)
  params = {'w': jnp.full((4, 4), 3.0)}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2)
  for _ in range(200):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.05 * 144
  with pytest.raises(ValueError, match='Unknown optimizer'):
    trainer.make_optimizer(10, name='sgd')


def test_projection_head_top_k_matches_brute_force_scoring():
  cfg = models.TransformerConfig(vocab_size=128, d_model=16, num_heads=2, head_dim=8, d_ff=32,
                                 num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                                 num_items=300)
  tr = trainer.Trainer(cfg, optax.sgd(0.0), partitioning.make_mesh(-1, 1, 1))
  params = tr.init_state(0).params
  x = np.random.default_rng(0).integers(2, 128, (8, 6)).astype(np.int32)
  top = np.asarray(tr.rank_items(params, jnp.asarray(x), 10))
  # Brute force: the decoder state after the start token against each item, one at a time.
  model = nnx.merge(tr.graphdef, params)
  encoded, valid = model.encode(jnp.asarray(x))
  h = np.asarray(model.decode_hidden(encoded, valid, jnp.zeros((8, 1), jnp.int32))[:, 0])
  table = np.asarray(params['item_embed'])
  scores = np.array([[h[b] @ table[i] / np.sqrt(16) for i in range(1, 301)] for b in range(8)])
  expected = np.argsort(-scores, axis=1, kind='stable')[:, :10] + 1
  np.testing.assert_array_equal(top, expected)


def _first_losses(monkeypatch, dropout_cls, steps=8):
  if dropout_cls is not None:
    monkeypatch.setattr(layers, 'Dropout', dropout_cls)
  cfg = models.TransformerConfig(vocab_size=256, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                 num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)
  tx, lr = trainer.make_optimizer(steps, learning_rate=3e-3, warmup_steps=1)
  # One device: the masks do not depend on the mesh, and one compiles faster.
  tr = trainer.Trainer(cfg, tx, partitioning.make_mesh(devices=jax.devices()[:1]), lr)
  state = tr.init_state(0)
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 256, (64, 4)).astype(np.int32)
  batch = {'encoder_input_tokens': rng.integers(2, 256, (64, 24)).astype(np.int32),
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt)}
  batch = partitioning.shard_batch(batch, tr.mesh)
  losses = []
  for _ in range(steps):
    state, m = tr.train_step(state, batch, jax.random.key(1))
    losses.append(float(m['loss']))
  return np.array(losses)


def test_hash_dropout_trains_like_threefry_dropout(monkeypatch):
  """The cheap dropout bits (layers.hash_bits) leave the first steps' losses
  where the threefry-based nnx.Dropout put them."""
  new = _first_losses(monkeypatch, None)
  old = _first_losses(monkeypatch, nnx.Dropout)  # the dropout before (threefry bits)
  assert new[-1] < new[0] - 0.5  # it learns
  np.testing.assert_allclose(new, old, rtol=0.03)


def test_adafactor_trains_under_tensor_and_fsdp_sharding():
  """Adafactor's factored moments (a parameter's row and column statistics,
  of lower rank) get a sharding of their own rank, so TIGER's recipe
  (gin/recommendation/tiger_*.gin) starts and steps on any mesh."""
  cfg = models.TransformerConfig(vocab_size=256, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                 num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  tx, lr = trainer.make_optimizer(4, name='adafactor', learning_rate=1e-2, warmup_steps=1,
                                  weight_decay=0.0)
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 256, (16, 4)).astype(np.int32)
  batch = {'encoder_input_tokens': rng.integers(2, 256, (16, 12)).astype(np.int32),
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt)}
  mesh = partitioning.make_mesh(1, 2, 2, devices=jax.devices()[:4])
  tr = trainer.Trainer(cfg, tx, mesh, lr)
  state = tr.init_state(0)
  losses = []
  for _ in range(4):
    state, m = tr.train_step(state, partitioning.shard_batch(batch, mesh), jax.random.key(1))
    losses.append(float(m['loss']))
  assert losses[-1] < losses[0]
