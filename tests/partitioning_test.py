import re

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from genrec import models, partitioning, trainer

CFG = models.TransformerConfig(vocab_size=256, d_model=32, num_heads=4, head_dim=8,
                               d_ff=64, num_encoder_layers=2, num_decoder_layers=2,
                               dropout_rate=0.0)

# Expected mesh PartitionSpec of every parameter, by path pattern.
EXPECTED = [
    (r'^embed$', P('model', 'fsdp')),
    (r'^(encoder|decoder)_bias/embedding$', P(None, 'model')),
    (r'/(query|key|value)/kernel$', P('fsdp', 'model', None)),
    (r'/out/kernel$', P('model', None, 'fsdp')),
    (r'/mlp/wi/kernel$', P('fsdp', 'model')),
    (r'/mlp/wo/kernel$', P('model', 'fsdp')),
    (r'(norm|^encoder_norm|^decoder_norm)/scale$', P('fsdp')),
    (r'^logits_dense/kernel$', P('fsdp', 'model')),
]


def _paths(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): v for path, v in flat}


def test_make_mesh_fills_and_validates():
  mesh = partitioning.make_mesh(data=-1, fsdp=2, model=2)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'model': 2}
  with pytest.raises(ValueError, match='does not fit'):
    partitioning.make_mesh(data=3, fsdp=1, model=1)
  with pytest.raises(ValueError, match='At most one'):
    partitioning.make_mesh(data=-1, fsdp=-1)


def test_every_parameter_partition_spec_on_2x2x2_mesh():
  mesh = partitioning.make_mesh(2, 2, 2)
  tx, _ = trainer.make_optimizer(10)
  tr = trainer.Trainer(CFG, tx, mesh)
  shardings = _paths(tr.state_shardings.params)
  # embed + 2 biases + 2 encoder layers x 8 + 2 decoder layers x 13 + 2 norms + logits.
  assert len(shardings) == 1 + 2 + 2 * 8 + 2 * 13 + 2 + 1
  for path, sharding in shardings.items():
    matches = [spec for pattern, spec in EXPECTED if re.search(pattern, path)]
    assert matches, f'no expectation for {path}'
    assert sharding.spec == matches[0], path
  # Adam moments follow their parameters.
  mu = _paths(tr.state_shardings.opt_state[1][0].mu)
  assert all(mu[p].spec == shardings[p].spec for p in shardings)
  # Initialized arrays really carry those shardings.
  state = tr.init_state(0)
  assert state.params['embed'].sharding.spec == P('model', 'fsdp')


def _batch(rng, n=8):
  tgt = rng.integers(2, CFG.vocab_size, (n, 3)).astype(np.int32)
  return {'encoder_input_tokens': rng.integers(2, CFG.vocab_size, (n, 12)).astype(np.int32),
          'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
          'decoder_target_tokens': tgt,
          'decoder_loss_weights': np.ones_like(tgt)}


def test_init_is_independent_of_the_mesh():
  tx, _ = trainer.make_optimizer(10)
  one = trainer.Trainer(CFG, tx, partitioning.make_mesh(devices=jax.devices()[:1]))
  eight = trainer.Trainer(CFG, tx, partitioning.make_mesh(2, 2, 2))
  a = jax.device_get(one.init_state(3).params)
  b = jax.device_get(eight.init_state(3).params)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_train_steps_on_8_devices_match_1_device():
  tx, lr = trainer.make_optimizer(100, warmup_steps=2)
  meshes = [partitioning.make_mesh(devices=jax.devices()[:1]),
            partitioning.make_mesh(2, 2, 2), partitioning.make_mesh(8, 1, 1)]
  trainers = [trainer.Trainer(CFG, tx, mesh, lr) for mesh in meshes]
  init = jax.device_get(trainers[0].init_state(0))
  results = []
  for tr in trainers:
    state = jax.device_put(init, tr.state_shardings)
    rng, losses = np.random.default_rng(0), []
    for _ in range(3):
      batch = partitioning.shard_batch(_batch(rng), tr.mesh)
      state, m = tr.train_step(state, batch, jax.random.key(0))
      losses.append(float(m['loss']))
    results.append((losses, jax.device_get(state.params['embed'])))
  (one, emb1), *others = results
  for losses, emb in others:
    np.testing.assert_allclose(losses, one, rtol=1e-5)
    np.testing.assert_allclose(emb, emb1, atol=1e-5)
  assert one[-1] < one[0]  # it learns


def test_logical_rules_never_reuse_a_mesh_axis():
  assert partitioning.logical_to_mesh_spec(('batch', 'length', 'embed')) == P(
      ('data', 'fsdp'), None, None)
  with pytest.raises(ValueError, match='no rule'):
    partitioning.logical_to_mesh_spec(('nonexistent',))


def test_map_batches_pads_the_last_batch_and_gathers_real_rows():
  mesh = partitioning.make_mesh()
  x = np.arange(21 * 3).reshape(21, 3)
  outs = partitioning.map_batches({'x': x}, 10, mesh, lambda b, rows: (
      b['x'].shape[0], partitioning.gather(b['x'] * 2, rows)))
  assert [o[0] for o in outs] == [8, 8, 8]  # rounded to the 8 data-parallel devices
  np.testing.assert_array_equal(np.concatenate([o[1] for o in outs]), x * 2)
