"""K-means (k-means++ init, Lloyd iterations) and the semantic-ID schemes built on it:
residual k-means (RQ-KMeans) and hierarchical k-means (DSI semantic docids)."""

import dataclasses
import time
from collections.abc import Callable

from absl import logging
import numpy as np

from genrec.ids import content
from genrec.ids.base import IdScheme, ItemIds


def squared_distances(x: np.ndarray, centroids: np.ndarray, chunk: int = 2048) -> np.ndarray:
  """[n, d] x [k, d] -> [n, k] squared Euclidean distances, computed as
  ((x - c) ** 2).sum(-1) a block of rows at a time (peak memory chunk * k * d,
  not n * k * d)."""
  out = np.empty((len(x), len(centroids)), np.result_type(x, centroids))
  for i in range(0, len(x), chunk):
    out[i:i + chunk] = ((x[i:i + chunk, None, :] - centroids[None]) ** 2).sum(-1)
  return out


def kmeans(x: np.ndarray, k: int, *, seed: int, num_iters: int = 50
           ) -> tuple[np.ndarray, np.ndarray]:
  """Clusters rows of x into k clusters.

  Args:
    x: float [n, d].
    k: clusters; fewer are used when n < k.
    seed: seeds the k-means++ initialization.
    num_iters: maximum Lloyd iterations (stops early when assignments settle).

  Returns:
    (centroids float32 [k', d], assignment int32 [n]) with k' = min(k, n).
  """
  x = np.asarray(x, np.float64)
  n = len(x)
  k = max(1, min(k, n))
  rng = np.random.default_rng(seed)
  sq = (x * x).sum(1)
  centroids = np.empty((k, x.shape[1]))
  centroids[0] = x[rng.integers(n)]
  best = np.maximum(sq - 2 * x @ centroids[0] + centroids[0] @ centroids[0], 0)
  for j in range(1, k):  # k-means++: sample proportionally to squared distance
    total = best.sum()
    idx = rng.choice(n, p=best / total) if total > 0 else rng.integers(n)
    centroids[j] = x[idx]
    best = np.minimum(best, np.maximum(sq - 2 * x @ centroids[j] + centroids[j] @ centroids[j], 0))
  assign = np.full(n, -1)
  for _ in range(num_iters):
    dist = sq[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    new = dist.argmin(1)
    if np.array_equal(new, assign):
      break
    assign = new
    counts = np.bincount(assign, minlength=k)
    sums = np.zeros_like(centroids)
    np.add.at(sums, assign, x)
    empty = counts == 0
    centroids[~empty] = sums[~empty] / counts[~empty, None]
    if empty.any():  # re-seed empty clusters with the points farthest from their centroid
      far = np.argsort(-dist[np.arange(n), assign])[:empty.sum()]
      centroids[empty] = x[far]
  return centroids.astype(np.float32), assign.astype(np.int32)


def sinkhorn_plan(dist: np.ndarray, epsilon: float = 0.05, num_iters: int = 100
                  ) -> np.ndarray:
  """Log of a balanced transport plan of n points onto k codes.

  Sinkhorn-Knopp on exp(-dist / (epsilon * scale)) in the log domain: rows sum
  to 1 (each point assigned once), columns to n / k (codes used uniformly).

  Args:
    dist: float [n, k] squared distances of points to codes.
    epsilon: entropic temperature relative to the distances' spread; smaller
      is closer to nearest-code assignment under the balance constraint.
    num_iters: Sinkhorn iterations.

  Returns:
    float [n, k] log plan.
  """
  n, k = dist.shape
  scale = max(float(dist.std()), 1e-12)
  log_q = -dist / (epsilon * scale)
  for _ in range(num_iters):
    log_q = log_q - _logsumexp(log_q, axis=0) + np.log(n / k)
    log_q = log_q - _logsumexp(log_q, axis=1)
  return log_q


def sinkhorn_assign(dist: np.ndarray, **kwargs) -> np.ndarray:
  """Each point's most probable code under the balanced plan: int32 [n]."""
  return sinkhorn_plan(dist, **kwargs).argmax(1).astype(np.int32)


def uniform_last_level(prefix: np.ndarray, dist: np.ndarray) -> np.ndarray:
  """LC-Rec's uniform semantic mapping of the last level.

  Items are assigned by the balanced Sinkhorn plan; items that share all
  earlier codes (a prefix bucket) then take distinct codes, each in order of
  confidence taking its most probable code not yet taken in its bucket, so
  that even items with identical content get different IDs while buckets
  have at most k items.

  Args:
    prefix: int [n, L-1] the earlier levels' codes.
    dist: float [n, k] distances of the last-level residuals to the codes.

  Returns:
    int32 [n] last-level codes.
  """
  log_q = sinkhorn_plan(dist)
  n, k = dist.shape
  codes = log_q.argmax(1).astype(np.int32)
  if prefix.shape[1] == 0:
    buckets = np.zeros(n, np.int64)
  else:
    _, buckets = np.unique(prefix, axis=0, return_inverse=True)
    buckets = buckets.reshape(-1)
  order = np.lexsort((-log_q.max(1), buckets))  # by bucket, most confident first
  prefs = np.argsort(-log_q, axis=1)
  taken, current = set(), None
  for i in order:
    if buckets[i] != current:
      taken, current = set(), buckets[i]
    if len(taken) == k:  # bucket larger than the codebook: the collision level takes over
      taken = set()
    code = next(c for c in prefs[i] if c not in taken)
    codes[i] = code
    taken.add(int(code))
  return codes


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
  m = x.max(axis=axis, keepdims=True)
  return m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def add_collision_level(codes: np.ndarray, level_sizes: tuple[int, ...]
                        ) -> tuple[np.ndarray, tuple[int, ...]]:
  """Appends a level that numbers the items sharing a code tuple (TIGER).

  Args:
    codes: int [num_items + 1, L] (row 0 unused).
    level_sizes: codebook size per level.

  Returns:
    (codes [num_items + 1, L + 1], sizes + (largest group size,)); every
    item's code is then unique.
  """
  body = codes[1:]
  _, group = np.unique(body, axis=0, return_inverse=True)
  group = group.reshape(-1)
  order = np.argsort(group, kind='stable')
  rank = np.empty(len(body), np.int32)
  starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
  lengths = np.diff(np.r_[starts, len(body)])
  rank[order] = np.arange(len(body)) - np.repeat(starts, lengths)
  out = np.full((codes.shape[0], codes.shape[1] + 1), -1, np.int32)
  out[1:, :-1] = body
  out[1:, -1] = rank
  return out, tuple(level_sizes) + (int(lengths.max()),)


def _finish(codes: np.ndarray, level_sizes: tuple[int, ...], scheme: str,
            dedup: bool, info: dict | None = None) -> ItemIds:
  """Item-id-indexed ItemIds from per-item codes [num_items, L], recording how
  many items collided before the optional collision level."""
  full = np.full((codes.shape[0] + 1, codes.shape[1]), -1, np.int32)
  full[1:] = codes
  info = {**(info or {}),
          'collisions_before_dedup': int(len(codes) - len(np.unique(codes, axis=0))),
          'collision_level': dedup}
  if dedup:
    full, level_sizes = add_collision_level(full, level_sizes)
  return ItemIds(codes=full, level_sizes=level_sizes, scheme=scheme, info=info)


ContentFn = Callable[..., np.ndarray]


def split_levels(n: int, num_levels: int, branching: int,
                 cluster_fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
  """Codes of a tree built level by level: every group of more than
  `branching` items is split by `cluster_fn(members, seed) -> cluster ids`;
  a smaller group gives its items distinct codes (they become leaves).

  Returns:
    int32 [n, num_levels]; leaves reached early carry 0 below.
  """
  codes = np.zeros((n, num_levels), np.int32)
  groups = [np.arange(n)]
  for level in range(num_levels):
    next_groups = []
    for g, members in enumerate(groups):
      if len(members) <= branching:
        codes[members, level] = np.arange(len(members))
        next_groups.extend(members[i:i + 1] for i in range(len(members)) if len(members) > 1)
        continue
      assign = cluster_fn(members, 1000 * level + g)
      codes[members, level] = assign
      next_groups.extend(members[assign == c] for c in range(assign.max() + 1))
    groups = next_groups
  return codes


@dataclasses.dataclass(frozen=True)
class ResidualKMeansIds(IdScheme):
  """RQ-KMeans: level l clusters the residuals left by levels < l.

  Attributes:
    num_levels: semantic levels (before the collision level).
    codebook_size: codes per level.
    content_fn: data -> float [num_items + 1, d] item content (row 0 unused);
      default text embeddings where the data has item text, else attributes.
    sinkhorn_last_level: assign the last level by balanced Sinkhorn-Knopp
      (LC-Rec) instead of nearest centroid, spreading items that would collide.
    dedup: append the collision level so that every item's ID is unique.
    seed: seeds k-means.
  """
  num_levels: int = 3
  codebook_size: int = 256
  content_fn: ContentFn = content.item_content
  sinkhorn_last_level: bool = False
  dedup: bool = True
  seed: int = 0

  @property
  def name(self) -> str:
    sk = '-sinkhorn' if self.sinkhorn_last_level else ''
    return (f'rqkmeans-{self.num_levels}x{self.codebook_size}{sk}-s{self.seed}'
            f'{content.tag(self.content_fn)}')

  def fit(self, data) -> ItemIds:
    residual = np.asarray(self.content_fn(data), np.float64)[1:]
    codes = np.zeros((len(residual), self.num_levels), np.int32)
    for level in range(self.num_levels):
      centroids, codes[:, level] = kmeans(residual, self.codebook_size,
                                          seed=self.seed + level)
      if self.sinkhorn_last_level and level == self.num_levels - 1:
        dist = squared_distances(residual, centroids.astype(np.float64))
        codes[:, level] = uniform_last_level(codes[:, :level], dist)
      residual = residual - centroids[codes[:, level]]
    return _finish(codes, (self.codebook_size,) * self.num_levels, self.name, self.dedup)


@dataclasses.dataclass(frozen=True)
class HierarchicalKMeansIds(IdScheme):
  """DSI semantic docids: k-means within each parent cluster, level by level.

  Unlike RQ-KMeans the codebooks are not shared: code c at level l means
  "the c-th sub-cluster of this item's parent", clustering the content itself.

  Attributes:
    num_levels: semantic levels (before the collision level).
    branching: clusters per node.
    content_fn, dedup, seed: as in ResidualKMeansIds.
  """
  num_levels: int = 2
  branching: int = 32
  content_fn: ContentFn = content.item_content
  dedup: bool = True
  seed: int = 0

  @property
  def name(self) -> str:
    return f'hkmeans-{self.num_levels}x{self.branching}-s{self.seed}{content.tag(self.content_fn)}'

  def fit(self, data) -> ItemIds:
    x = np.asarray(self.content_fn(data), np.float64)[1:]
    codes = split_levels(
        len(x), self.num_levels, self.branching,
        lambda members, seed: kmeans(x[members], self.branching, seed=self.seed + seed)[1])
    return _finish(codes, (self.branching,) * self.num_levels, self.name, self.dedup)


def product_quantize(x: np.ndarray, num_subspaces: int, codebook_size: int, *, seed: int,
                     num_iters: int = 25) -> tuple[np.ndarray, float, list[np.ndarray]]:
  """Product quantization: k-means in each of `num_subspaces` slices of the
  features (`np.array_split` of the columns).

  Returns:
    (codes int32 [n, num_subspaces], mean squared reconstruction error, each
    subspace's centroids [<= codebook_size, its columns]).
  """
  codes = np.zeros((len(x), num_subspaces), np.int32)
  err, books = 0.0, []
  for m, cols in enumerate(np.array_split(np.arange(x.shape[1]), num_subspaces)):
    centroids, codes[:, m] = kmeans(x[:, cols], codebook_size, seed=seed + m,
                                    num_iters=num_iters)
    err += float(((x[:, cols] - centroids[codes[:, m]]) ** 2).sum())
    books.append(centroids)
  return codes, err / len(x), books


def _pq_reconstruct(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """x's product-quantized reconstruction: each subspace's code -> the mean of
  the rows that carry it."""
  out = np.zeros_like(x)
  for m, cols in enumerate(np.array_split(np.arange(x.shape[1]), codes.shape[1])):
    sums = np.zeros((codes[:, m].max() + 1, len(cols)))
    np.add.at(sums, codes[:, m], x[:, cols])
    counts = np.maximum(np.bincount(codes[:, m], minlength=len(sums)), 1)
    out[:, cols] = (sums / counts[:, None])[codes[:, m]]
  return out


@dataclasses.dataclass(frozen=True)
class ProductQuantizationIds(IdScheme):
  """Long, unordered Semantic IDs: (optimized) product quantization of the
  item content, `num_levels` codes of `codebook_size` each (RPG: 16-64 codes
  per item, predicted in parallel by `models.ItemSidParallel`).

  With `opq_iters` > 0 the content is first rotated by OPQ (Ge et al., 2013,
  the non-parametric solution): alternately product-quantize the rotated
  content and set the rotation to the orthogonal Procrustes solution that
  maps the content onto its reconstruction, lowering the quantization error
  and balancing the information across subspaces. The codes are unordered:
  no level refines another, unlike RQ-KMeans.

  Attributes:
    num_levels: codes per item (subspaces); 8 to 64 in RPG.
    codebook_size: codes per subspace.
    opq_iters: rotation updates (0: plain PQ on the content's own axes).
    whiten: first project the content on its principal axes scaled to unit
      variance (as RPG does before OPQ), so that no subspace is left with
      the low-variance directions only.
    content_fn, dedup, seed: as in ResidualKMeansIds.
  """
  num_levels: int = 32
  codebook_size: int = 256
  opq_iters: int = 4
  whiten: bool = False
  content_fn: ContentFn = content.item_content
  dedup: bool = True
  seed: int = 0

  @property
  def name(self) -> str:
    kind = ('w' if self.whiten else '') + ('opq' if self.opq_iters else 'pq')
    return (f'{kind}-{self.num_levels}x{self.codebook_size}-s{self.seed}'
            f'{content.tag(self.content_fn)}')

  def fit(self, data) -> ItemIds:
    x = np.asarray(self.content_fn(data), np.float64)[1:]
    if x.shape[1] < self.num_levels:
      raise ValueError(f'ProductQuantizationIds.num_levels = {self.num_levels} exceeds the '
                       f'{x.shape[1]} content dimensions; use at most that many codes.')
    mean = x.mean(0)
    x = x - mean
    projection = np.eye(x.shape[1])
    if self.whiten:
      _, sv, vt = np.linalg.svd(x, full_matrices=False)
      keep = sv > sv[0] * 1e-6
      projection = vt[keep].T / (sv[keep] / np.sqrt(len(x)))
      x = x @ projection
      if x.shape[1] < self.num_levels:
        raise ValueError(f'ProductQuantizationIds: the content has {x.shape[1]} independent '
                         f'directions, fewer than num_levels = {self.num_levels}.')
    rotation = np.eye(x.shape[1])
    errors, t0 = [], time.time()
    for i in range(self.opq_iters):
      codes, err, _ = product_quantize(x @ rotation, self.num_levels, self.codebook_size,
                                       seed=self.seed, num_iters=10)
      errors.append(err)
      logging.info('OPQ rotation update %d/%d: quantization MSE %.4g (%.0fs, about %.0fs left)',
                   i + 1, self.opq_iters, err, time.time() - t0,
                   (time.time() - t0) / (i + 1) * (self.opq_iters - i))
      target = _pq_reconstruct(x @ rotation, codes)
      u, _, vt = np.linalg.svd(x.T @ target)  # Procrustes: min ||x R - target||
      rotation = u @ vt
    codes, err, books = product_quantize(x @ rotation, self.num_levels, self.codebook_size,
                                         seed=self.seed)
    info = {'quantization_mse': err, 'opq_mse_by_iter': errors,
            'content_variance': float((x ** 2).sum(1).mean())}
    ids = _finish(codes, (self.codebook_size,) * self.num_levels, self.name, self.dedup, info)
    # What codes new content the same way (`genrec.ids.extend`): the
    # transforms and each subspace's fitted centroids.
    quantizer = {'mean': mean, 'projection': projection, 'rotation': rotation,
                 **{f'centroids_{m}': book for m, book in enumerate(books)}}
    return dataclasses.replace(ids, quantizer=quantizer)
