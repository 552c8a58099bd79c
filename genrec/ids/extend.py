"""Identifiers for items (documents) added after the identifiers were fit.

`extend(ids, new_content, old_content)` keeps every existing item's codes
and gives each new item, appended after them (item ids num_items + 1 ...):

* atomic: the next atomic code (the level grows);
* naive digits: the next numbers (refused when they need more digits);
* hierarchical k-means (DSI semantic): the code of the nearest cluster at
  each level, descending within the parent's clusters; a cluster's centroid
  is the mean of its items' content, as k-means left it;
* residual k-means: per level, the nearest centroid of the residual;
* (optimized) product quantization: the fitted quantizer (`ItemIds.quantizer`,
  saved beside the codes since it was added) applied to the content;

and, where the ids have a collision level, the next free number among the
items that share the new item's semantic codes (that level grows as needed).
Nothing is fit again: a model trained on the old codes reads the new ones
with the meaning they had in training.
"""

import dataclasses

import numpy as np

from genrec.ids.base import ItemIds
from genrec.ids.kmeans import squared_distances


def residual_codebooks(ids: ItemIds, emb: np.ndarray, num_levels: int) -> list[np.ndarray]:
  """Per semantic level of residual ids, the centroid [codes, d] of each
  code: the mean of what earlier levels left of its items' content `emb`
  [num_items, d] (a code no item uses stays 0)."""
  residual, out = emb.astype(np.float64), []
  for level in range(num_levels):
    codes = ids.codes[1:, level]
    size = ids.level_sizes[level]
    sums = np.zeros((size, emb.shape[1]))
    np.add.at(sums, codes, residual)
    centroids = sums / np.maximum(np.bincount(codes, minlength=size), 1)[:, None]
    out.append(centroids.astype(np.float32))
    residual = residual - centroids[codes]
  return out


def _semantic_levels(ids: ItemIds) -> int:
  return ids.num_levels - (1 if ids.info.get('collision_level') else 0)


def _residual_codes(ids: ItemIds, new: np.ndarray, old: np.ndarray) -> np.ndarray:
  levels = _semantic_levels(ids)
  books = residual_codebooks(ids, old, levels)
  residual, codes = new.astype(np.float64), np.zeros((len(new), levels), np.int32)
  for level, book in enumerate(books):
    used = np.flatnonzero(np.bincount(ids.codes[1:, level], minlength=len(book)))
    codes[:, level] = used[squared_distances(residual, book[used].astype(np.float64)
                                             ).argmin(1)]
    residual = residual - book[codes[:, level]]
  return codes


def _hierarchical_codes(ids: ItemIds, new: np.ndarray, old: np.ndarray) -> np.ndarray:
  levels = _semantic_levels(ids)
  body = ids.codes[1:, :levels]
  codes = np.zeros((len(new), levels), np.int32)
  clusters: dict[tuple, tuple] = {}  # prefix -> (its child codes, their centroids)
  for i in range(len(new)):
    rows = np.arange(len(body))  # the old items under the new item's prefix
    for level in range(levels):
      prefix = tuple(codes[i, :level].tolist())
      if prefix not in clusters:
        choices = np.unique(body[rows, level])
        clusters[prefix] = choices, np.stack(
            [old[rows[body[rows, level] == c]].mean(0) for c in choices]).astype(np.float64)
      choices, centroids = clusters[prefix]
      codes[i, level] = choices[squared_distances(new[i:i + 1].astype(np.float64),
                                                  centroids)[0].argmin()]
      rows = rows[body[rows, level] == codes[i, level]]
  return codes


def _pq_codes(ids: ItemIds, new: np.ndarray, old: np.ndarray) -> np.ndarray:
  del old
  q = ids.quantizer
  if not q:
    raise ValueError(f'The identifiers ({ids.scheme}) carry no quantizer: they were fit before '
                     'product-quantization ids saved theirs (ids/quantizer.npz). Fit them '
                     'again (a new run) to add items without retraining.')
  x = (new.astype(np.float64) - q['mean']) @ q['projection'] @ q['rotation']
  codes = np.zeros((len(new), _semantic_levels(ids)), np.int32)
  for m, cols in enumerate(np.array_split(np.arange(x.shape[1]), codes.shape[1])):
    codes[:, m] = squared_distances(x[:, cols], q[f'centroids_{m}']).argmin(1)
  return codes


_CONTENT_CODES = {'rqkmeans': _residual_codes, 'hkmeans': _hierarchical_codes,
                  'pq': _pq_codes, 'opq': _pq_codes, 'wpq': _pq_codes, 'wopq': _pq_codes}


def _with_collision_level(ids: ItemIds, semantic: np.ndarray) -> tuple[np.ndarray, tuple]:
  """Appends to new items' semantic codes the next free collision number
  among the items (old and new before them) that share them."""
  levels = _semantic_levels(ids)
  sizes = list(ids.level_sizes)
  if not ids.info.get('collision_level'):
    old = {tuple(r) for r in ids.codes[1:, :levels].tolist()}
    clash = [i for i, r in enumerate(semantic.tolist()) if tuple(r) in old]
    if clash:
      raise ValueError(f'{len(clash)} new items get codes of existing items and the '
                       f'identifiers ({ids.scheme}) have no collision level to tell them '
                       'apart: fit them with dedup=True.')
    return semantic, tuple(sizes)
  taken: dict[tuple, int] = {}
  for row in ids.codes[1:].tolist():
    key = tuple(row[:levels])
    taken[key] = max(taken.get(key, 0), row[levels] + 1)
  last = np.zeros(len(semantic), np.int32)
  for i, row in enumerate(semantic.tolist()):
    key = tuple(row)
    last[i] = taken.get(key, 0)
    taken[key] = last[i] + 1
  sizes[levels] = max(sizes[levels], int(last.max(initial=-1)) + 1)
  return np.concatenate([semantic, last[:, None]], 1), tuple(sizes)


def extend(ids: ItemIds, num_new: int, new_content: np.ndarray | None = None,
           old_content: np.ndarray | None = None) -> ItemIds:
  """`ids` with `num_new` items appended (module docstring).

  Args:
    ids: the fitted identifiers.
    num_new: how many items to add.
    new_content: float [num_new, d], the new items' content (what the
      scheme was fit on: e.g. their text embeddings); content schemes only.
    old_content: float [ids.num_items, d], the old items' content in item
      order; hierarchical and residual k-means only (their centroids).

  Returns:
    New ItemIds; items 1..ids.num_items keep their codes.
  """
  n, kind = ids.num_items, ids.scheme.split('-')[0]
  if num_new <= 0:
    return ids
  if kind == 'atomic':
    codes = np.arange(n, n + num_new, dtype=np.int32)[:, None]
    sizes = (ids.level_sizes[0] + num_new,)
  elif kind == 'naive':
    width = ids.num_levels
    numbers = ids.codes[1:] @ (10 ** np.arange(width - 1, -1, -1))
    new = np.arange(numbers.max() + 1, numbers.max() + 1 + num_new)
    if len(str(int(new[-1]))) > width:
      raise ValueError(f'The naive docids have {width} digits; numbering {num_new} more '
                       f'documents after {int(numbers.max())} needs {len(str(int(new[-1])))}: '
                       'train a new run with the whole collection.')
    codes = np.array([[int(ch) for ch in str(int(k)).zfill(width)] for k in new], np.int32)
    sizes = ids.level_sizes
  elif kind in _CONTENT_CODES:
    if new_content is None or len(new_content) != num_new:
      raise ValueError(f'Adding {num_new} items to {ids.scheme} ids needs their content '
                       f'[{num_new}, d] (what the ids were fit on), got '
                       f'{None if new_content is None else np.shape(new_content)}.')
    if kind in ('rqkmeans', 'hkmeans') and (old_content is None or len(old_content) != n):
      got = None if old_content is None else np.shape(old_content)
      raise ValueError(f'{ids.scheme} ids recover their centroids from the old items\' '
                       f'content [{n}, d]; got {got}.')
    codes, sizes = _with_collision_level(
        ids, _CONTENT_CODES[kind](ids, np.asarray(new_content), old_content))
  else:
    raise ValueError(f'Items cannot be added to {ids.scheme} identifiers without fitting '
                     'them again (supported: atomic, naive digits, hierarchical and residual '
                     'k-means, product quantization).')
  return dataclasses.replace(ids, codes=np.concatenate([ids.codes, codes]), level_sizes=sizes,
                             info={**ids.info, 'items_added': ids.info.get('items_added', 0)
                                   + num_new})
