import numpy as np
import pytest

from genrec import metrics


def test_hand_computed_cases():
  ranked = np.array([[5, 3, 9, 1, 2, 7, 8, 4, 6, 10],   # target 5 at rank 1
                     [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # target 7 at rank 7
                     [0, 0, 1, 2, 3, 4, 6, 8, 9, 10],   # target 11 missing, 2 invalid
                     [2, 4, 6, 8, 10, 12, 14, 16, 18, 3]])  # target 3 at rank 10
  targets = np.array([5, 7, 11, 3])
  m = metrics.rank_metrics(ranked, targets)
  assert m['recall@5'] == pytest.approx(1 / 4)
  assert m['recall@10'] == pytest.approx(3 / 4)
  assert m['ndcg@5'] == pytest.approx(1 / 4)
  assert m['ndcg@10'] == pytest.approx((1 + 1 / np.log2(8) + 1 / np.log2(11)) / 4)
  assert m['invalid_rate'] == pytest.approx(2 / 40)


def test_cutoff_larger_than_beam_is_an_error():
  with pytest.raises(ValueError, match='beam_size'):
    metrics.rank_metrics(np.ones((2, 5), int), np.ones(2, int), ks=(10,))


def test_matches_ranx():
  ranx = pytest.importorskip('ranx')
  rng = np.random.default_rng(0)
  n, k, items = 300, 10, 40
  ranked = np.stack([rng.permutation(items)[:k] + 1 for _ in range(n)])
  targets = rng.integers(1, items + 1, n)
  qrels = ranx.Qrels({f'q{i}': {f'd{t}': 1} for i, t in enumerate(targets)})
  run = ranx.Run({f'q{i}': {f'd{d}': float(k - j) for j, d in enumerate(r)}
                  for i, r in enumerate(ranked)})
  ref = ranx.evaluate(qrels, run, ['recall@5', 'recall@10', 'ndcg@5', 'ndcg@10'])
  ours = metrics.rank_metrics(ranked, targets)
  for name, value in ref.items():
    assert ours[name] == pytest.approx(value, abs=1e-9), name


def test_seqio_metric_fn_and_popularity():
  m = metrics.ranking_metrics([3, 4], [[3, 1, 2, 5, 6, 7, 8, 9, 10, 11], [1] * 10])
  assert m['recall@10'] == 0.5 and m['ndcg@10'] == 0.5
  counts = np.array([100, 1, 5, 5, 0])  # index 0 is padding and never recommended
  np.testing.assert_array_equal(metrics.popularity_ranking(counts, 3), [2, 3, 1])


def test_popularity_slices_partition_items_by_training_frequency():
  counts = np.array([0, 50, 0, 3, 9, 1, 1, 20, 2, 4, 7])  # item 0 is padding
  slices = metrics.popularity_slices(counts, head=0.2, tail=0.5)
  names = [metrics.SLICES[i] for i in slices]
  assert names[2] == 'unseen' and names[0] == 'unseen'
  assert {i for i, n in enumerate(names) if n == 'head'} == {1, 7}      # top 2 of 9 seen
  assert {i for i, n in enumerate(names) if n == 'tail'} == {3, 5, 6, 8}  # bottom 4 of 9
  with pytest.raises(ValueError, match='fractions'):
    metrics.popularity_slices(counts, head=0.7, tail=0.5)


def test_slices_sum_back_to_the_overall_metrics():
  rng = np.random.default_rng(0)
  n_items = 50
  targets = rng.integers(1, n_items + 1, 400)
  ranked = rng.integers(0, n_items + 1, (400, 10))
  ranked[:100, 3] = targets[:100]
  slices = metrics.popularity_slices(rng.integers(0, 5, n_items + 1))
  overall = metrics.rank_metrics(ranked, targets)
  parts = metrics.sliced_metrics(ranked, targets, slices)
  assert sum(p['users'] for p in parts.values()) == 400
  for k, v in overall.items():
    total = sum(p[k] * p['users'] for p in parts.values()) / 400
    assert abs(total - v) < 1e-12, k


def test_ndcg_counts_the_first_hit_only():
  # A list that repeats the target cannot score above a perfect one.
  m = metrics.rank_metrics(np.array([[7, 7, 7, 1, 2]]), np.array([7]), ks=(5,))
  assert m['ndcg@5'] == 1.0 and m['recall@5'] == 1.0
  m = metrics.rank_metrics(np.array([[1, 7, 7, 2, 3]]), np.array([7]), ks=(5,))
  assert m['ndcg@5'] == pytest.approx(1 / np.log2(3))


def test_short_prediction_lists_report_every_cut_off():
  m = metrics.ranking_metrics([3, 4], [[3, 1, 2], [9, 4]])
  assert set(m) == {'recall@5', 'ndcg@5', 'recall@10', 'ndcg@10', 'invalid_rate'}
  assert m['recall@10'] == 1.0 and m['ndcg@10'] == pytest.approx((1 + 1 / np.log2(3)) / 2)
  assert m['invalid_rate'] == 0.0  # the missing positions are not invalid identifiers
  assert metrics.ranking_metrics([3], [[0, 3]])['invalid_rate'] == 0.5
