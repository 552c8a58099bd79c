"""Atomic identifiers: one token per item (the classic ID-based baseline)."""

import dataclasses

import numpy as np

from genrec.ids.base import IdScheme, ItemIds


@dataclasses.dataclass(frozen=True)
class AtomicIds(IdScheme):
  """Item i gets the single code i - 1."""

  @property
  def name(self) -> str:
    return 'atomic'

  def fit(self, data) -> ItemIds:
    n = data.num_items
    codes = np.full((n + 1, 1), -1, np.int32)
    codes[1:, 0] = np.arange(n)
    return ItemIds(codes=codes, level_sizes=(n,), scheme=self.name)
