"""Random fixed-length codes: each item a random, collision-free code tuple.

The control of the semantic-ID ablations: same length and vocabulary as a
learned scheme, but no structure shared between related items.
"""

import dataclasses

import numpy as np

from genrec.ids.base import IdScheme, ItemIds, codebook_size_for, keys_to_codes


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
    k = codebook_size_for(n, self.num_levels, self.codebook_size)
    rng = np.random.default_rng(self.seed)
    space = k ** self.num_levels
    keys = (rng.permutation(space)[:n] if space <= 50_000_000
            else rng.choice(space, size=n, replace=False))
    return ItemIds(codes=keys_to_codes(keys, k, self.num_levels),
                   level_sizes=(k,) * self.num_levels, scheme=self.name)
