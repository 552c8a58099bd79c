"""Naive identifiers: the decimal digits of each item's number (DSI's naive
string docids, at a fixed length)."""

import dataclasses

import numpy as np

from genrec.ids.base import IdScheme, ItemIds


@dataclasses.dataclass(frozen=True)
class NaiveDigitIds(IdScheme):
  """Item i gets the digits of its number, zero-padded to the widest one.

  The number is the item's external id (`data.item_keys[i]`) when every
  item's is a distinct decimal number (a collection's document ids), else i.
  One level per digit, 10 codes each; `genrec.ids.extend` numbers new items
  after the largest.
  """

  @property
  def name(self) -> str:
    return 'naive'

  def fit(self, data) -> ItemIds:
    n = data.num_items
    keys = list(getattr(data, 'item_keys', None) or [''] * (n + 1))[1:]
    numbers = [int(k) if k.isdigit() else i + 1 for i, k in enumerate(keys)]
    if len(set(numbers)) != len(numbers):  # not distinct numbers: use the item ids
      numbers = list(range(1, n + 1))
    width = len(str(max(numbers)))
    digits = np.array([[int(ch) for ch in str(k).zfill(width)] for k in numbers], np.int32)
    return ItemIds(np.vstack([np.full((1, width), -1), digits]), (10,) * width,
                   f'{self.name}-{width}-digits')
