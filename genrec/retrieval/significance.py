"""Paired significance of a retrieval run against another on the same queries.

Fisher's randomization test (Smucker, Allan & Carterette, CIKM 2007; ranx's
'fisher'): under the null hypothesis the two systems are exchangeable on
each query, so each query's pair of scores is swapped with probability 1/2;
the p-value is the share of such relabelings whose absolute difference of
means is at least the observed one. Two-sided, Monte Carlo with a fixed seed
(deterministic), counting the observed labeling itself ((b + 1) / (n + 1),
never 0).
"""

import numpy as np

from genrec.retrieval import corpus

PERMUTATIONS = 10_000
ALPHA = 0.05  # the level the tables mark


def randomization_test(a, b, permutations: int = PERMUTATIONS, seed: int = 0) -> float:
  """Two-sided p-value that per-query scores `a` and `b` (paired, same query
  order) have the same mean."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f'Paired per-query scores must be two vectors of one length, got shapes '
                     f'{a.shape} and {b.shape}.')
  diff = a - b
  if not diff.size or not diff.any():
    return 1.0
  observed = abs(diff.mean()) - 1e-12  # exact ties with the observed count as extreme
  rng = np.random.default_rng(seed)
  extreme = 0
  for start in range(0, permutations, 1000):  # bounded memory: 1000 x queries signs at a time
    signs = rng.integers(0, 2, (min(1000, permutations - start), diff.size)) * 2 - 1
    extreme += int((np.abs((signs * diff).mean(axis=1)) >= observed).sum())
  return (extreme + 1) / (permutations + 1)


def p_value(ranked: dict[str, list[str]], reference: dict[str, list[str]],
            qrels: dict[str, set[str]], metric: str = 'ndcg@10') -> float:
  """The randomization test's p-value of two rankings of the same queries on
  `metric` per query (corpus.per_query_metrics, binary relevance)."""
  ours, theirs = (corpus.per_query_metrics(r, qrels) for r in (ranked, reference))
  return randomization_test([ours[q][metric] for q in qrels], [theirs[q][metric] for q in qrels])
