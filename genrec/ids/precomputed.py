"""Identifiers learned elsewhere, loaded from a file, and sequential indexing."""

import dataclasses
import json
import os
import re

import numpy as np

from genrec.ids.base import IdScheme, ItemIds, codebook_size_for, keys_to_codes
from genrec.ids.kmeans import _finish

_TOKEN = re.compile(r'^<([a-z])_(\d+)>$')


def _parse_code(token, where: str) -> int:
  if isinstance(token, int):
    return token
  m = _TOKEN.match(str(token))
  if not m:
    raise ValueError(f'{where}: code {token!r} is neither an integer nor an LC-Rec token '
                     'like "<a_183>".')
  return int(m.group(2))


@dataclasses.dataclass(frozen=True)
class PrecomputedIds(IdScheme):
  """Reads `{"item": [code, ...]}` (LC-Rec's `*.index.json` format or integers).

  Attributes:
    path: the JSON file; a relative path is resolved against `data_dir`.
    data_dir: folder for relative paths (gin: %DATA_DIR); default
      $GENREC_DATA_DIR.
    item_offset: added to the file's item keys to get genrec item ids
      (LC-Rec files are 0-based: item_offset=1).
    dedup: append the collision level when several items share a code.
  """
  path: str = ''
  data_dir: str | None = None
  item_offset: int = 1
  dedup: bool = True

  @property
  def name(self) -> str:
    stem = os.path.splitext(os.path.basename(self.path))[0]
    return f'precomputed-{stem}'

  def fit(self, data) -> ItemIds:
    from genrec.data.sequences import resolve_data_dir  # avoid an import cycle
    path = self.path
    if not os.path.isabs(path):
      path = os.path.join(resolve_data_dir(self.data_dir), path)
    try:
      with open(path) as f:
        raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f'Cannot read precomputed identifiers {path}: {e}') from e
    if not isinstance(raw, dict) or not raw:
      raise ValueError(f'{path}: expected a JSON object {{"item": [code, ...]}}.')
    lengths = {len(v) for v in raw.values()}
    if len(lengths) != 1:
      raise ValueError(f'{path}: every item needs the same number of codes; found '
                       f'lengths {sorted(lengths)}.')
    num_levels = lengths.pop()
    codes = np.full((data.num_items + 1, num_levels), -1, np.int64)
    for key, value in raw.items():
      item = int(key) + self.item_offset
      if not 1 <= item <= data.num_items:
        raise ValueError(f'{path}: item {key!r} + item_offset {self.item_offset} = {item} is '
                         f'outside 1..{data.num_items}; check item_offset.')
      codes[item] = [_parse_code(t, f'{path}: item {key!r}') for t in value]
    missing = np.flatnonzero(codes[1:, 0] < 0) + 1
    if missing.size:
      raise ValueError(f'{path}: no codes for {missing.size} items (e.g. item ids '
                       f'{missing[:5].tolist()}); the file must cover the whole catalog.')
    sizes = tuple(int(s) + 1 for s in codes[1:].max(axis=0))
    collisions = data.num_items - len(np.unique(codes[1:], axis=0))
    if not (self.dedup and collisions):  # unique already: no collision level needed
      return ItemIds(codes=codes.astype(np.int32), level_sizes=sizes, scheme=self.name,
                     info={'collisions_before_dedup': int(collisions)})
    return _finish(codes[1:], sizes, self.name, dedup=True)


@dataclasses.dataclass(frozen=True)
class SequentialIds(IdScheme):
  """Sequential indexing (Hua et al.): items numbered in the order they first
  appear in the users' training sequences, written in base `codebook_size`
  over `num_levels` tokens, so items consumed together share prefixes."""
  num_levels: int = 2
  codebook_size: int = 0

  @property
  def name(self) -> str:
    return f'sequential-{self.num_levels}x{self.codebook_size or "auto"}'

  def fit(self, data) -> ItemIds:
    n = data.num_items
    k = codebook_size_for(n, self.num_levels, self.codebook_size)
    order, seen = [], np.zeros(n + 1, bool)
    for seq in data.train_sequences():
      for item in seq:
        if not seen[item]:
          seen[item] = True
          order.append(item)
    order.extend(np.flatnonzero(~seen[1:]) + 1)  # items never seen in training
    rank = np.empty(n + 1, np.int64)
    rank[np.asarray(order)] = np.arange(n)
    return ItemIds(codes=keys_to_codes(rank[1:], k, self.num_levels),
                   level_sizes=(k,) * self.num_levels, scheme=self.name)
