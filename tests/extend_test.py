"""Identifiers for items added after the fit (`genrec.ids.extend`)."""

import numpy as np
import pytest

from genrec.ids import (HierarchicalKMeansIds, ItemIds, ProductQuantizationIds,
                        ResidualKMeansIds)
from genrec.ids import extend


def _clusters(n: int, seed: int, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  which = rng.integers(0, len(centers), n)
  return centers[which] + 0.05 * rng.normal(size=(n, centers.shape[1])), which


CENTERS = np.random.default_rng(7).normal(size=(4, 16)) * 3


def test_atomic_and_naive_ids_number_the_new_items_after_the_old():
  atomic = ItemIds(np.arange(-1, 5)[:, None], (5,), 'atomic')
  grown = extend.extend(atomic, 3)
  assert grown.level_sizes == (8,) and grown.codes[1:, 0].tolist() == list(range(8))
  assert grown.tokens_to_items(grown.token_table()[6:]).tolist() == [6, 7, 8]
  digits = np.array([[-1, -1], [0, 1], [0, 2], [9, 7]])
  naive = ItemIds(digits, (10, 10), 'naive-2-digits')
  assert extend.extend(naive, 2).codes[-2:].tolist() == [[9, 8], [9, 9]]
  with pytest.raises(ValueError, match='needs 3'):
    extend.extend(naive, 3)


@pytest.mark.parametrize('scheme', [HierarchicalKMeansIds(num_levels=2, branching=4),
                                    ResidualKMeansIds(num_levels=2, codebook_size=4),
                                    ProductQuantizationIds(num_levels=4, codebook_size=4,
                                                           opq_iters=1)])
def test_content_ids_code_new_items_like_their_nearest_old_ones(scheme):
  old, old_cluster = _clusters(200, 0, CENTERS)
  new, new_cluster = _clusters(20, 1, CENTERS)
  ids = type(scheme)(**{**scheme.__dict__, 'content_fn': lambda _: np.vstack(
      [old[:1] * 0, old])}).fit(None)
  grown = extend.extend(ids, len(new), new, old)
  assert grown.num_items == 220
  np.testing.assert_array_equal(grown.codes[:201], ids.codes)  # old items keep their codes
  levels = grown.num_levels - 1  # the semantic levels, before the collision level
  # A new item gets the first code of its cluster's old items, and semantic
  # codes that old items of its cluster carry ...
  first = {c: ids.codes[1 + int(np.flatnonzero(old_cluster == c)[0]), 0] for c in range(4)}
  assert grown.codes[201:, 0].tolist() == [first[c] for c in new_cluster]
  for row, c in zip(grown.codes[201:, :levels].tolist(), new_cluster):
    assert row in ids.codes[1:][old_cluster == c, :levels].tolist()
  # ... and a collision number of its own: every identifier stays unique.
  assert grown.num_collisions == 0
  assert grown.tokens_to_items(grown.token_table()[201:]).tolist() == list(range(201, 221))


def test_product_quantization_needs_its_saved_quantizer(tmp_path):
  old, _ = _clusters(100, 0, CENTERS)
  ids = ProductQuantizationIds(num_levels=4, codebook_size=4, opq_iters=0,
                               content_fn=lambda _: np.vstack([old[:1] * 0, old])).fit(None)
  ids.save(str(tmp_path / 'ids'))
  loaded = ItemIds.load(str(tmp_path / 'ids'))
  assert sorted(loaded.quantizer) == sorted(ids.quantizer)
  np.testing.assert_array_equal(extend.extend(loaded, 5, old[:5]).codes[-5:, :4],
                                ids.codes[1:6, :4])  # old content codes as it was coded
  bare = ItemIds(ids.codes, ids.level_sizes, ids.scheme, ids.info)
  with pytest.raises(ValueError, match='carry no quantizer'):
    extend.extend(bare, 5, old[:5])
  with pytest.raises(ValueError, match=r'needs their content \[5, d\]'):
    extend.extend(loaded, 5)
  with pytest.raises(ValueError, match='cannot be added to'):
    extend.extend(ItemIds(ids.codes, ids.level_sizes, 'random-2x4'), 1)
