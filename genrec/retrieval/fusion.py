"""Hybrid retrieval: a generative run fused with BM25's.

A run is ({query id: doc ids, best first}, {query id: their scores}), as the
retrieval methods write them (TREC run files, `read_trec_run`). Two fusions:

* Reciprocal-rank fusion (Cormack, Clarke & Buettcher 2009):
  score(d) = sum over runs r of 1 / (k + rank_r(d)), rank from 1, k = 60;
  a document absent from a run gets nothing from it. No parameter is tuned.
* Interpolation of normalized scores:
  score(d) = alpha * bm25(d) + (1 - alpha) * generative(d), each run's scores
  min-max normalized per query to [0, 1]; a document absent from a run gets
  0 from it. `alpha` is chosen on held-out training queries (`tune_alpha`),
  never on the queries it is reported on.

Ties are broken by the first run's order, then by doc id, so fused runs are
deterministic.
"""

from collections.abc import Sequence

import numpy as np

from genrec.retrieval import corpus

Run = tuple[dict[str, list[str]], dict[str, list[float]]]
RRF_K = 60
ALPHA_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def read_trec_run(path: str) -> Run:
  """A TREC run file (`qid Q0 docid rank score tag`), ordered by rank."""
  rows: dict[str, list[tuple[int, str, float]]] = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 6:
        raise ValueError(f'{path}, line {n}: a TREC run line has 6 fields '
                         f'(qid Q0 docid rank score tag), got {len(parts)}: {line.strip()!r}.')
      q, _, d, rank, score, _ = parts
      try:
        rows.setdefault(q, []).append((int(rank), d, float(score)))
      except ValueError:
        raise ValueError(f'{path}, line {n}: rank must be an integer and score a number: '
                         f'{line.strip()!r}.') from None
  ranked, scores = {}, {}
  for q, r in rows.items():
    r.sort()
    ranked[q] = [d for _, d, _ in r]
    scores[q] = [s for _, _, s in r]
  return ranked, scores


def _order(scores: dict[str, float], first: list[str], k: int) -> tuple[list[str], list[float]]:
  pos = {d: i for i, d in enumerate(first)}
  docs = sorted(scores, key=lambda d: (-scores[d], pos.get(d, len(pos)), d))[:k]
  return docs, [scores[d] for d in docs]


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 100, rrf_k: int = RRF_K) -> Run:
  """Fuses `runs` by reciprocal rank; the top `k` documents per query."""
  ranked, scores = {}, {}
  for q in sorted(set().union(*(r[0] for r in runs))):
    fused: dict[str, float] = {}
    for docs, _ in runs:
      for rank, d in enumerate(docs.get(q, ()), 1):
        fused[d] = fused.get(d, 0.0) + 1.0 / (rrf_k + rank)
    ranked[q], scores[q] = _order(fused, runs[0][0].get(q, []), k)
  return ranked, scores


def _minmax(values: list[float]) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if not len(v):
    return v
  span = v.max() - v.min()
  return (v - v.min()) / span if span > 0 else np.ones_like(v)


def interpolate(bm25: Run, generative: Run, alpha: float, k: int = 100) -> Run:
  """alpha * normalized BM25 + (1 - alpha) * normalized generative scores."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}.')
  ranked, scores = {}, {}
  for q in sorted(set(bm25[0]) | set(generative[0])):
    fused: dict[str, float] = {}
    for (docs, sc), w in ((bm25, alpha), (generative, 1.0 - alpha)):
      for d, s in zip(docs.get(q, ()), _minmax(sc.get(q, []))):
        fused[d] = fused.get(d, 0.0) + w * float(s)
    ranked[q], scores[q] = _order(fused, bm25[0].get(q, []), k)
  return ranked, scores


def tune_alpha(bm25: Run, generative: Run, qrels: dict[str, set[str]],
               grid: Sequence[float] = ALPHA_GRID, metric: str = 'ndcg@10'
               ) -> tuple[float, list[dict]]:
  """The alpha of `grid` with the best mean `metric` on `qrels`' queries
  (ties: the larger alpha, i.e. more weight on BM25), and every alpha's value."""
  if not qrels:
    raise ValueError('tune_alpha needs held-out queries with relevant documents.')
  curve = []
  for a in grid:
    ranked, _ = interpolate(_only(bm25, qrels), _only(generative, qrels), float(a))
    value = corpus.retrieval_metrics(ranked, qrels)[metric]
    curve.append({'alpha': float(a), metric: round(value, 4)})
  best = max(curve, key=lambda r: (r[metric], r['alpha']))
  return best['alpha'], curve


def _only(run: Run, queries) -> Run:
  return ({q: run[0][q] for q in queries if q in run[0]},
          {q: run[1][q] for q in queries if q in run[1]})
