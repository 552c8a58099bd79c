"""Random fixed-length codes: each item a random, collision-free code tuple.

The control of the semantic-ID ablations: same length and vocabulary as a
learned scheme, but no structure shared between related items.
"""

import dataclasses
import math

import numpy as np

from genrec.ids.base import IdScheme, ItemIds


@dataclasses.dataclass(frozen=True)
class RandomCodeIds(IdScheme):
  """`num_levels` codes per item, each level of `codebook_size` codes.

  Attributes:
    num_levels: tokens per item.
    codebook_size: codes per level; 0 picks the smallest size whose
      `codebook_size ** num_levels` covers the catalog.
    seed: the draw.
  """
  num_levels: int = 2
  codebook_size: int = 0
  seed: int = 0

  @property
  def name(self) -> str:
    return f'random-{self.num_levels}x{self.codebook_size or "auto"}-s{self.seed}'

  def fit(self, data) -> ItemIds:
    n = data.num_items
    if self.num_levels < 1:
      raise ValueError(f'RandomCodeIds.num_levels must be >= 1, got {self.num_levels}.')
    k = self.codebook_size
    if not k:
      k = max(1, math.ceil(n ** (1 / self.num_levels) - 1e-9))
      while k ** self.num_levels < n:
        k += 1
    if k ** self.num_levels < n:
      raise ValueError(f'{self.num_levels} levels of {k} codes give {k ** self.num_levels} '
                       f'identifiers, fewer than the {n} items; raise codebook_size.')
    rng = np.random.default_rng(self.seed)
    space = k ** self.num_levels
    keys = (rng.permutation(space)[:n] if space <= 50_000_000
            else rng.choice(space, size=n, replace=False))
    codes = np.full((n + 1, self.num_levels), -1, np.int32)
    for level in reversed(range(self.num_levels)):
      codes[1:, level] = keys % k
      keys //= k
    return ItemIds(codes=codes, level_sizes=(k,) * self.num_levels, scheme=self.name)
