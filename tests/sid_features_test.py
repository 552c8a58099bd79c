import numpy as np
import pytest

from genrec.ranking import sid_features as sf

SIZES = (8, 16, 16)


def _codes(n=400, seed=0):
  rng = np.random.default_rng(seed)
  codes = np.stack([rng.integers(0, k, n) for k in SIZES], 1)
  return np.vstack([np.full((1, len(SIZES)), -1), codes])  # row 0: padding item


def test_hashing_is_deterministic_and_within_bounds(tmp_path):
  keys = [np.arange(10000) % 7, np.arange(10000)]
  a, b = sf.hash_keys(keys, 1000), sf.hash_keys(keys, 1000)
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() < 1000
  assert len(np.unique(a)) > 990  # spreads over the table
  assert not np.array_equal(a, sf.hash_keys(keys, 1000, salt=1))
  for variant in sf.VARIANTS:
    f = sf.item_features(variant, 50, 400, _codes(), SIZES, np.ones(401, np.int64),
                         str(tmp_path))
    assert f.rows.min() >= 0 and f.rows.max() < 50 and not f.mask[0].any()


def test_sid_strings_round_trip():
  codes = _codes()[1:]
  np.testing.assert_array_equal(sf.strings_to_codes(sf.sid_strings(codes, SIZES), SIZES), codes)


def test_sentencepiece_pieces_reassemble_the_codes(tmp_path):
  codes = _codes(600)[1:]
  weights = np.random.default_rng(1).zipf(1.5, len(codes)).clip(0, 1000)
  sp = sf.train_sid_sentencepiece(codes, SIZES, weights, str(tmp_path / 'sid'), 300)
  strings = sf.sid_strings(codes, SIZES)
  pieces = sp.encode(strings, out_type=str)
  assert sp.get_piece_size() > sum(SIZES)  # multi-symbol pieces were learned
  for s, p, c in zip(strings, pieces, codes):
    assert ''.join(p) == s
    np.testing.assert_array_equal(sf.strings_to_codes([''.join(p)], SIZES)[0], c)
  # Frequent items earn whole pieces: on average fewer pieces than rare ones.
  n = np.array([len(p) for p in pieces])
  assert n[weights >= 20].mean() < n[weights <= 1].mean()
  # An item absent from training is cut into known pieces (never the unknown piece).
  new = np.array([[7, 15, 15]])
  assert not any((codes == new).all(1))
  ids = sp.encode(sf.sid_strings(new, SIZES))[0]
  assert len(ids) >= 2 and sp.unk_id() not in ids


def test_every_variant_spends_the_same_table_budget(tmp_path):
  from genrec.ranking import ranker
  shapes = set()
  for variant in sf.VARIANTS:
    f = sf.item_features(variant, 64, 400, _codes(), SIZES, np.ones(401, np.int64),
                         str(tmp_path))
    assert f.table_rows == 64
    model = ranker.abstract_ranker(ranker.RankerConfig(dim=8), f.table_rows)
    shapes.add(tuple(model.table.shape))
  assert shapes == {(64, 8)}


def test_sid_variants_share_rows_between_items_with_common_codes():
  codes = _codes()
  f = sf.item_features('sid_prefix', 10**6, 400, codes, SIZES)
  same_first = np.flatnonzero(codes[1:, 0] == codes[1, 0]) + 1
  assert (f.rows[same_first, 0] == f.rows[1, 0]).all()  # the level-0 prefix key
  r = sf.item_features('random', 10**6, 400)
  assert len(np.unique(r.rows[1:, 0])) == 400  # a huge table: no item shares a row


def test_bad_variant_or_missing_codes_are_named():
  with pytest.raises(ValueError, match='Unknown item representation'):
    sf.item_features('sid_trigram', 10, 5)
  with pytest.raises(ValueError, match='needs the items'):
    sf.item_features('sid_unigram', 10, 5)
