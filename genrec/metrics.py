"""Top-K ranking metrics over full-catalog rankings, seqio style.

Each user has one relevant item (leave-one-out), so
  Recall@K = 1 if the target is among the first K predictions else 0,
  NDCG@K   = 1 / log2(rank + 1) for the target's first 1-based rank <= K,
             else 0 (a repeated target earns nothing more: NDCG <= 1),
averaged over users. Item id 0 in a ranking marks an identifier that names no
item; it is never relevant and counts in the invalid rate. -1 marks "no
prediction" (a list shorter than K): never relevant, not invalid.
"""

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (5, 10)


def rank_metrics(ranked: np.ndarray, targets: np.ndarray,
                 ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """Recall@K and NDCG@K averaged over users.

  Args:
    ranked: int [n, k_max] predicted item ids, best first (0 = invalid).
    targets: int [n] the relevant item of each user.
    ks: cut-offs; each must be <= k_max.

  Returns:
    {'recall@K': ..., 'ndcg@K': ...} plus 'invalid_rate': the fraction of
    predicted identifiers (all k_max columns) that map to no item.
  """
  ranked = np.asarray(ranked)
  targets = np.asarray(targets)
  if ranked.ndim != 2 or ranked.shape[0] != targets.shape[0]:
    raise ValueError(f'ranked must be [n, k] and targets [n]; got {ranked.shape} and '
                     f'{targets.shape}.')
  if max(ks) > ranked.shape[1]:
    raise ValueError(f'Cut-off {max(ks)} exceeds the {ranked.shape[1]} predictions per user; '
                     'decode with beam_size >= the largest K.')
  n = max(len(targets), 1)
  hit = (ranked == targets[:, None]) & (targets[:, None] > 0)  # [n, k_max]
  first = hit & (np.cumsum(hit, axis=1) == 1)  # only the first hit of a list gains
  gains = first / np.log2(np.arange(2, ranked.shape[1] + 2))[None, :]
  out = {}
  for k in ks:
    out[f'recall@{k}'] = float(hit[:, :k].any(axis=1).sum() / n)
    out[f'ndcg@{k}'] = float(gains[:, :k].sum(axis=1).sum() / n)
  predicted = ranked >= 0
  out['invalid_rate'] = (float((ranked == 0).sum() / predicted.sum()) if predicted.any()
                         else 0.0)
  return out


def ranking_metrics(targets: Sequence[int], predictions: Sequence[Sequence[int]]
                    ) -> dict[str, float]:
  """seqio metric fn: targets are item ids, predictions ranked item-id lists.

  Every cut-off of DEFAULT_KS is reported; lists shorter than K count what
  they hold (the missing positions are never relevant)."""
  width = max([len(p) for p in predictions] + list(DEFAULT_KS))
  ranked = np.full((len(predictions), width), -1, np.int64)
  for i, p in enumerate(predictions):
    ranked[i, :len(p)] = p
  return rank_metrics(ranked, np.asarray(targets), ks=DEFAULT_KS)


def popularity_ranking(train_counts: np.ndarray, k: int) -> np.ndarray:
  """The k most frequent training items, most frequent first (ties: lower id)."""
  counts = np.asarray(train_counts).astype(np.float64)
  counts[0] = -1  # padding is never recommended
  return np.argsort(-counts, kind='stable')[:k].astype(np.int32)


SLICES = ('head', 'torso', 'tail', 'unseen')


def popularity_slices(target_counts: np.ndarray, head: float = 0.2, tail: float = 0.5
                      ) -> np.ndarray:
  """Slice index (into SLICES) of every item id by training-target frequency.

  Items seen as training targets are ranked by count (ties: lower id first):
  the top `head` fraction is 'head', the bottom `tail` fraction 'tail', the
  rest 'torso'; items never a training target are 'unseen' (cold start).

  Args:
    target_counts: int [num_items + 1], how often each item is a training target.

  Returns:
    int8 [num_items + 1].
  """
  if not (0 <= head and 0 <= tail and head + tail <= 1):
    raise ValueError(f'head ({head}) and tail ({tail}) must be fractions summing to <= 1.')
  counts = np.asarray(target_counts)
  out = np.full(len(counts), SLICES.index('unseen'), np.int8)
  seen = np.flatnonzero(counts > 0)
  order = seen[np.argsort(-counts[seen], kind='stable')]
  n_head, n_tail = int(round(head * len(order))), int(round(tail * len(order)))
  out[order] = SLICES.index('torso')
  out[order[:n_head]] = SLICES.index('head')
  out[order[len(order) - n_tail:]] = SLICES.index('tail')
  return out


def sliced_metrics(ranked: np.ndarray, targets: np.ndarray, item_slices: np.ndarray,
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
  """`rank_metrics` on the users of each target-item slice, with 'users' counts.

  The overall metric is the users-weighted sum of the slices' metrics.
  """
  ranked, targets = np.asarray(ranked), np.asarray(targets)
  of_user = item_slices[targets]
  out = {}
  for i, name in enumerate(SLICES):
    keep = of_user == i
    out[name] = rank_metrics(ranked[keep], targets[keep], ks) | {'users': int(keep.sum())}
  return out
