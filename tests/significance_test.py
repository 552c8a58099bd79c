import numpy as np
import pytest

from genrec.retrieval import corpus, significance


def test_randomization_test_matches_ranx_fisher():
  """Our p-value agrees with ranx's Fisher randomization test within the
  Monte Carlo error of both (10,000 permutations each)."""
  fisher = pytest.importorskip('ranx.statistical_tests.fisher_randomization_test')
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 1, 120)
  for shift in (0.0, 0.03, 0.06, 0.15):
    other = np.clip(base + shift + rng.normal(0, 0.2, base.size), 0, 1)
    theirs, _ = fisher.fisher_randomization_test(base, other, n_permutations=10_000)
    ours = significance.randomization_test(base, other)
    assert abs(ours - theirs) < 0.02, (shift, ours, theirs)


def test_randomization_test_edges():
  a = np.array([0.1, 0.5, 0.9])
  assert significance.randomization_test(a, a) == 1.0
  assert significance.randomization_test(a, a + 0.01) == significance.randomization_test(
      a, a + 0.01)  # fixed seed: deterministic
  # Every one of 40 queries better by the same margin: only the all-same relabelings
  # are as extreme, so p is the smallest the Monte Carlo count can give.
  x = np.zeros(40)
  assert significance.randomization_test(x + 1, x) == pytest.approx(1 / 10_001)
  with pytest.raises(ValueError, match='one length'):
    significance.randomization_test(a, a[:2])


def test_p_value_pairs_rankings_by_query():
  qrels = {f'q{i}': {f'd{i}'} for i in range(30)}
  perfect = {q: [next(iter(r)), 'x'] for q, r in qrels.items()}
  wrong = {q: ['x', 'y'] for q in qrels}  # a query it misses entirely also scores 0
  del wrong['q0']
  assert significance.p_value(perfect, wrong, qrels) < 0.001
  assert significance.p_value(perfect, dict(reversed(perfect.items())), qrels) == 1.0
  per_query = corpus.per_query_metrics(perfect, qrels)
  assert per_query['q3']['ndcg@10'] == 1.0 and per_query['q3']['recall@1'] == 1.0
