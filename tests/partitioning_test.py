import dataclasses
import os
import re

import jax
from jax.sharding import PartitionSpec as P
from flax import nnx
import numpy as np
import optax
import pytest

from genrec import models, partitioning, trainer
from genrec.ranking import ranker

CFG = models.TransformerConfig(vocab_size=256, d_model=32, num_heads=8, head_dim=4,
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


# Per-device shard shapes on 8 devices of representative parameters, by
# strategy (CFG: vocab 256, d_model 32, 8 heads x 4, d_ff 64; the ranker's
# table 4000 x 32).
SHARD_SHAPES = {
    'data': {'embed': (256, 32), 'query': (32, 8, 4), 'wi': (32, 64), 'logits': (32, 256),
             'table': (4000, 32)},
    'fsdp': {'embed': (256, 4), 'query': (4, 8, 4), 'wi': (4, 64), 'logits': (4, 256),
             'table': (500, 32)},
    'tensor': {'embed': (32, 32), 'query': (32, 1, 4), 'wi': (32, 8), 'logits': (32, 32),
               'table': (500, 32)},
    'fsdp_tensor': {'embed': (128, 8), 'query': (8, 4, 4), 'wi': (8, 32), 'logits': (8, 128),
                    'table': (500, 32)},
}
PATHS = {'embed': 'embed', 'query': 'decoder_layers/0/self_attn/query/kernel',
         'wi': 'decoder_layers/1/mlp/wi/kernel', 'logits': 'logits_dense/kernel'}


@pytest.mark.parametrize('strategy', sorted(SHARD_SHAPES))
def test_each_strategy_shards_parameters_and_optimizer_state(strategy):
  mesh = partitioning.make_mesh(strategy=strategy)
  expected = SHARD_SHAPES[strategy]
  tx, _ = trainer.make_optimizer(10)
  tr = trainer.Trainer(CFG, tx, mesh)
  params = _paths(tr.abstract_state.params)
  for name, path in PATHS.items():
    assert params[path].sharding.shard_shape(params[path].shape) == expected[name], name
  # AdamW's moments shard exactly like their parameters; its counter replicates.
  adam = tr.abstract_state.opt_state[1][0]
  for moments in (adam.mu, adam.nu):
    for path, m in _paths(moments).items():
      assert m.sharding.shard_shape(m.shape) == params[path].sharding.shard_shape(
          params[path].shape), path
  assert adam.count.sharding.is_fully_replicated
  # Bytes on one device: all of it when replicated, about an eighth otherwise
  # (norm scales and the relative-position biases stay whole).
  total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tr.abstract_state))
  per_device = partitioning.per_device_bytes(tr.abstract_state, tr.state_shardings)
  if strategy == 'data':
    assert per_device == total
  else:
    assert per_device < total / 8 * 1.25, (per_device, total)
  # The batch is split over data x fsdp (replicated over the tensor axis).
  rows = partitioning.batch_sharding(mesh).shard_shape((64, 5))[0]
  assert rows == {'tensor': 64, 'fsdp_tensor': 16}.get(strategy, 8)
  # The ranker's hashed table is row-sharded unless data parallel; its Adam
  # moments too.
  graphdef, abstract = nnx.split(ranker.abstract_ranker(ranker.RankerConfig(), 4000))
  tx = optax.adam(1e-3)
  abstract, specs, abstract_opt, opt_specs = trainer.param_and_opt_specs(abstract, tx)
  table = partitioning.named_shardings(specs, mesh)['table']
  assert table.shard_shape((4000, 32)) == expected['table']
  mu = partitioning.named_shardings(opt_specs, mesh)[0].mu['table']
  assert mu.shard_shape((4000, 32)) == expected['table']


def test_a_row_sharded_ranker_table_gives_the_replicated_gradients():
  config = ranker.RankerConfig(dim=8, mlp_dims=(16,))
  graphdef, abstract = nnx.split(ranker.abstract_ranker(config, 64))
  specs = partitioning.param_partition_specs(abstract)
  with nnx.use_eager_sharding(False):
    params = nnx.to_pure_dict(nnx.state(ranker.Ranker(config, 64, rngs=nnx.Rngs(0)),
                                        nnx.Param))
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 64, (21, 3)).astype(np.int32)
  mask = np.ones((21, 3), bool)
  history = rng.integers(0, 21, (16, 5)).astype(np.int32)
  candidates = rng.integers(1, 21, (16, 4)).astype(np.int32)

  def loss(p):
    return nnx.merge(graphdef, p)(history, candidates, rows, mask).sum()
  outs = []
  for strategy in ('data', 'fsdp', 'tensor'):
    shardings = partitioning.named_shardings(specs, partitioning.make_mesh(strategy=strategy))
    grads = jax.jit(jax.grad(loss), out_shardings=shardings)(
        jax.device_put(params, shardings))
    outs.append(jax.device_get(grads))
  for other in outs[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 outs[0], other)


def test_a_mesh_that_does_not_divide_a_parameter_is_named():
  tx, _ = trainer.make_optimizer(10)
  four_heads = models.TransformerConfig(**{**CFG.__dict__, 'num_heads': 4})
  with pytest.raises(ValueError, match=r'split 8 ways \(mesh axes model'):
    trainer.Trainer(four_heads, tx, partitioning.make_mesh(strategy='tensor'))
  with pytest.raises(ValueError, match='Unknown sharding strategy'):
    partitioning.make_mesh(strategy='zero3')


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
  tx, lr = trainer.make_optimizer(100, learning_rate=1e-2, warmup_steps=2)
  meshes = [partitioning.make_mesh(devices=jax.devices()[:1]),
            partitioning.make_mesh(2, 2, 2), partitioning.make_mesh(strategy='tensor')]
  # One layer each (the shard-shape tests cover CFG's two): three compiles.
  cfg = dataclasses.replace(CFG, num_encoder_layers=1, num_decoder_layers=1)
  trainers = [trainer.Trainer(cfg, tx, mesh, lr) for mesh in meshes]
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


@pytest.mark.parametrize('strategy', sorted(partitioning.STRATEGIES))
def test_each_sharding_gin_file_selects_its_strategy_in_every_run_mode(strategy):
  import gin  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.add_config_file_search_path(repo)  # for the files' includes
  try:
    for mode in ('gin/runs/train.gin', 'gin/ranking/sid_ranking.gin',
                 'gin/retrieval/cranfield.gin'):
      gin.clear_config()
      gin.parse_config_files_and_bindings(
          [os.path.join(repo, mode), os.path.join(repo, 'gin', 'sharding', f'{strategy}.gin')],
          ['DATASET = "beauty"', 'MODEL = None'])  # the run file alone: no model file
      fn = (gin.query_parameter('train.train.mesh_fn') if 'train' in mode else
            gin.query_parameter('ranker.train_and_evaluate.mesh_fn') if 'ranking' in mode else
            gin.query_parameter('docgen.train_and_evaluate.mesh_fn'))
      assert dict(fn.scoped_configurable_fn().shape) == dict(
          partitioning.make_mesh(strategy=strategy).shape), mode
  finally:
    gin.clear_config()
