import json

import jax
import numpy as np
import pytest

from genrec import checkpoints, partitioning
from genrec.data import sequences
from genrec.ranking import ranker, sid_features
from genrec.ids import ResidualKMeansIds

SCHEME = ResidualKMeansIds(num_levels=2, codebook_size=8, dedup=False)


@pytest.fixture(scope='module')
def data():
  return sequences.make_synthetic(num_users=400, num_items=150, seed=0)


def _run(variant, rows, workdir, data, cache, **kw):
  return ranker.train_and_evaluate(
      variant, rows, str(workdir), dataset=data, sid_scheme=SCHEME,
      config=ranker.RankerConfig(dim=8, mlp_dims=(16,)), num_train_steps=kw.pop('steps', 150),
      batch_size=64, eval_negatives=19, cold_fraction=0.2, data_cache=cache,
      mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]), **kw)


def test_cold_start_split_keeps_new_items_out_of_training(data):
  rd = ranker.split_cold_start(data, 0.2, 20, seed=0)
  assert rd.cold.sum() == 30 and not rd.cold[0]
  assert not rd.cold[rd.train_target].any() and not rd.cold[rd.train_history].any()
  assert rd.train_counts[rd.cold].sum() == 0
  assert rd.cold[rd.test_target].any()  # some test targets are new items
  with pytest.raises(ValueError, match='cold_fraction'):
    ranker.split_cold_start(data, 1.0, 20, seed=0)


def test_eval_candidates_never_repeat_the_target():
  t = np.array([1, 5, 150, 77])
  c = ranker.eval_candidates(t, 150, 99, seed=0)
  assert c.shape == (4, 100) and (c[:, 0] == t).all()
  assert ((c[:, 1:] != t[:, None]) & (c[:, 1:] >= 1) & (c[:, 1:] <= 150)).all()


def test_auc_and_slice_metrics():
  assert ranker.auc(np.array([1, 0, 0, 1]), np.array([.9, .1, .5, .4])) == pytest.approx(.75)
  assert ranker.auc(np.array([1, 0]), np.array([.5, .5])) == pytest.approx(.5)
  logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
  m = ranker.slice_metrics(logits, np.array([0, 1]))
  assert m['users'] == 2 and m['recall@10'] == 1.0
  assert m['auc'] == pytest.approx(ranker.auc(np.array([1, 0, 0, 1, 0, 0]), logits.ravel()))


def _table(workdir) -> np.ndarray:
  """The embedding table of the run's final checkpoint."""
  import orbax.checkpoint as ocp
  manager = checkpoints.make_manager(str(workdir / 'checkpoints'), keep=1, best_metric=None)
  out = manager.restore(manager.latest_step(),
                        args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return np.asarray(out.state['params']['table'])


def test_cold_items_get_sid_embeddings_and_no_learned_random_row(data, tmp_path):
  rows = 100_000  # large enough that no warm item shares a cold item's random row
  rd = ranker.split_cold_start(data, 0.2, 20, seed=0)
  ids = SCHEME.fit(data)
  cold = rd.cold
  cache, shapes = {}, set()
  for variant in ('random', 'sid_prefix'):
    _run(variant, rows, tmp_path / f'{variant}_1', data, cache, steps=1)
    row = _run(variant, rows, tmp_path / variant, data, cache)
    before, after = _table(tmp_path / f'{variant}_1'), _table(tmp_path / variant)
    shapes.add(before.shape)
    f = sid_features.item_features(variant, rows, data.num_items, ids.codes, ids.level_sizes)
    warm_rows = set(f.rows[~cold][f.mask[~cold]].tolist())
    cold_rows = f.rows[cold][f.mask[cold]]
    # Adam leaves a row with zero gradient exactly where it started.
    moved = np.abs(after[cold_rows] - before[cold_rows]).max(-1) > 0
    if variant == 'random':
      assert not warm_rows & set(cold_rows.tolist())
      assert not moved.any()  # no gradient ever reached a new item's row
    else:
      assert moved.mean() > 0.5  # trained by warm items that share their codes
    assert 0 < row['all/auc'] <= 1 and row['cold/users'] > 0
  assert shapes == {(rows, 8)}  # the same budget


def test_training_learns_and_rerun_reuses_the_checkpoint(data, tmp_path):
  cache = {}
  row = _run('sid_unigram', 256, tmp_path, data, cache, steps=300)
  assert row['all/auc'] > 0.7, row  # synthetic sessions follow topics: learnable
  again = _run('sid_unigram', 256, tmp_path, data, cache, steps=300)
  assert again['train_s'] == row['train_s'] and again['all/auc'] == row['all/auc']
  json.dumps(row)  # a plain table row


def test_trains_sharded_on_a_data_and_model_mesh(data, tmp_path):
  # 8 fake CPU devices: batch split 4 ways, embedding table rows split 2 ways.
  mesh = partitioning.make_mesh(data=4, fsdp=1, model=2)
  row = ranker.train_and_evaluate(
      'sid_bigram', 256, str(tmp_path), dataset=data, sid_scheme=SCHEME,
      config=ranker.RankerConfig(dim=8, mlp_dims=(16,)), num_train_steps=20, batch_size=64,
      eval_negatives=19, cold_fraction=0.2, mesh_fn=lambda: mesh)
  assert 0 < row['all/auc'] <= 1 and row['device'].startswith('8 x')
  assert _table(tmp_path).shape == (256, 8)  # the sharded table checkpoints whole


def test_ties_count_against_the_positive():
  # A constant model ranks the positive last among 20 candidates.
  m = ranker.slice_metrics(np.zeros((5, 20)), np.arange(5))
  assert m['recall@10'] == 0.0 and m['auc'] == pytest.approx(0.5)
  x = np.zeros((1, 20))
  x[0, 0] = 1.0
  assert ranker.slice_metrics(x, np.arange(1))['recall@10'] == 1.0


def test_eval_negatives_are_distinct_and_exclude_the_users_items():
  targets = np.array([1, 2, 3])
  own = [np.array([1, 4, 5]), np.array([2, 6]), np.arange(1, 40)]
  c = ranker.eval_candidates(targets, 50, 10, seed=0, exclude=own)
  assert c.shape == (3, 11) and (c[:, 0] == targets).all()
  for row, mine in zip(c, own):
    assert len(set(row[1:])) == 10 and not set(row[1:]) & set(mine)
    assert ((row[1:] >= 1) & (row[1:] <= 50)).all()
  with pytest.raises(ValueError, match='lower eval_negatives'):
    ranker.eval_candidates(np.array([1]), 12, 20, seed=0)


def test_a_workdir_trained_with_other_settings_is_refused(tmp_path, data):
  _run('random', 64, tmp_path, data, {}, steps=5)
  with pytest.raises(ValueError, match=r'(?s)other settings.*learning_rate: 0.002 -> 0.1'):
    _run('random', 64, tmp_path, data, {}, steps=5, learning_rate=0.1)
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  with pytest.raises(ValueError, match='is an existing file'):
    _run('random', 64, a_file, data, {}, steps=5)
