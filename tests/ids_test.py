import dataclasses
import json

import numpy as np
import pytest

from genrec import ids
from genrec.data import sequences


def _data(n_items=500):
  return sequences.SequenceData('toy', n_items, (np.array([1, 2, 3]),))


@pytest.mark.parametrize('scheme', [ids.AtomicIds(), ids.NaiveDigitIds(),
                                    ids.RandomCodeIds(num_levels=2),
                                    ids.RandomCodeIds(num_levels=3, codebook_size=16, seed=4)])
def test_scheme_gives_unique_in_range_round_trippable_ids(scheme, tmp_path):
  data = _data()
  item_ids = scheme.fit(data)
  assert item_ids.codes.shape == (501, item_ids.num_levels)
  assert item_ids.num_collisions == 0
  assert len({tuple(c) for c in item_ids.codes[1:]}) == 500
  tokens = item_ids.items_to_tokens(np.arange(1, 501))
  assert tokens.min() >= ids.NUM_RESERVED_TOKENS and tokens.max() < item_ids.vocab_size
  # Each level owns its own token range.
  for level in range(item_ids.num_levels):
    lo = item_ids.level_offsets[level]
    assert ((tokens[:, level] >= lo) & (tokens[:, level] < lo + item_ids.level_sizes[level])).all()
  np.testing.assert_array_equal(item_ids.tokens_to_items(tokens), np.arange(1, 501))
  # Deterministic for a seed; save/load round trip.
  np.testing.assert_array_equal(scheme.fit(data).codes, item_ids.codes)
  item_ids.save(str(tmp_path))
  loaded = ids.ItemIds.load(str(tmp_path))
  np.testing.assert_array_equal(loaded.codes, item_ids.codes)
  assert loaded.level_sizes == item_ids.level_sizes and loaded.scheme == item_ids.scheme


def test_naive_digits_are_the_external_numbers_else_the_item_ids():
  def data(keys):
    return dataclasses.replace(_data(len(keys)), item_keys=('', *keys))
  numbered = ids.NaiveDigitIds().fit(data(['7', '12', '3']))
  assert numbered.scheme == 'naive-2-digits' and numbered.level_sizes == (10, 10)
  assert numbered.codes[1:].tolist() == [[0, 7], [1, 2], [0, 3]]
  # Keys that are not distinct numbers: the item ids 1..n.
  for keys in (['a', 'b', 'c'], ['5', '05', '6']):
    assert ids.NaiveDigitIds().fit(data(keys)).codes[1:].tolist() == [[1], [2], [3]]


def test_tokens_that_name_no_item_map_to_zero():
  item_ids = ids.RandomCodeIds(num_levels=2, codebook_size=30).fit(_data(100))
  used = {tuple(c) for c in item_ids.codes[1:]}
  free = next((a, b) for a in range(30) for b in range(30) if (a, b) not in used)
  off = item_ids.level_offsets
  bad = np.array([[free[0] + off[0], free[1] + off[1]],  # unused code tuple
                  [0, 0],  # padding
                  [off[1], off[0]]])  # level tokens swapped
  np.testing.assert_array_equal(item_ids.tokens_to_items(bad), [0, 0, 0])


def test_random_codes_seed_changes_assignment_and_size_is_checked():
  a = ids.RandomCodeIds(seed=0).fit(_data())
  b = ids.RandomCodeIds(seed=1).fit(_data())
  assert not np.array_equal(a.codes, b.codes)
  assert a.level_sizes == (23, 23)  # smallest k with k^2 >= 500
  with pytest.raises(ValueError, match='fewer than the 500 items'):
    ids.RandomCodeIds(num_levels=2, codebook_size=10).fit(_data())


def test_corrupt_artifact_is_reported(tmp_path):
  ids.AtomicIds().fit(_data(10)).save(str(tmp_path))
  (tmp_path / 'codes.npy').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='delete the folder'):
    ids.ItemIds.load(str(tmp_path))


def _clustered_data(n_items=300, seed=0):
  """Items with attributes drawn from 6 latent groups (so content has structure)."""
  rng = np.random.default_rng(seed)
  group = rng.integers(0, 6, n_items)
  attrs = [np.zeros(0, np.int32)] + [
      np.unique(np.r_[g * 10 + rng.integers(0, 3, 2), 60 + rng.integers(0, 40, 1)]).astype(np.int32)
      for g in group]
  data = sequences.SequenceData('clustered', n_items, (np.array([1, 2, 3]),), tuple(attrs))
  return data, group


@pytest.mark.parametrize('scheme', [
    ids.ResidualKMeansIds(num_levels=2, codebook_size=8),
    ids.HierarchicalKMeansIds(num_levels=2, branching=6)])
def test_kmeans_schemes_unique_deterministic_and_semantic(scheme, tmp_path):
  data, group = _clustered_data()
  item_ids = scheme.fit(data)
  assert item_ids.num_levels == 3  # two semantic levels + the collision level
  assert item_ids.num_collisions == 0
  np.testing.assert_array_equal(scheme.fit(data).codes, item_ids.codes)
  tokens = item_ids.items_to_tokens(np.arange(1, 301))
  np.testing.assert_array_equal(item_ids.tokens_to_items(tokens), np.arange(1, 301))
  assert tokens.max() < item_ids.vocab_size
  # The first level follows the latent groups: items of one group mostly share a code.
  first = item_ids.codes[1:, 0]
  purity = np.mean([np.bincount(first[group == g]).max() / (group == g).sum()
                    for g in range(6)])
  assert purity > 0.8
  item_ids.save(str(tmp_path))
  np.testing.assert_array_equal(ids.ItemIds.load(str(tmp_path)).codes, item_ids.codes)


def test_collision_level_numbers_items_sharing_a_code():
  codes = np.array([[-1, -1], [0, 1], [0, 1], [2, 0], [0, 1]], np.int32)
  out, sizes = ids.add_collision_level(codes, (3, 2))
  np.testing.assert_array_equal(out[1:, 2], [0, 1, 0, 2])
  assert sizes == (3, 2, 3)


def test_kmeans_recovers_separated_clusters():
  from genrec.ids.kmeans import kmeans
  rng = np.random.default_rng(0)
  centers = np.array([[0, 0], [10, 0], [0, 10]], float)
  x = np.concatenate([c + rng.normal(0, 0.5, (50, 2)) for c in centers])
  cent, assign = kmeans(x, 3, seed=0)
  assert len({tuple(assign[i * 50:(i + 1) * 50]) for i in range(3)}) == 3
  assert all(len(set(assign[i * 50:(i + 1) * 50])) == 1 for i in range(3))
  np.testing.assert_allclose(np.sort(cent[:, 0]), [0, 0, 10], atol=0.5)


def test_precomputed_lcrec_file_with_zero_based_ids(tmp_path):
  path = tmp_path / 'toy.index.json'
  path.write_text(json.dumps({'0': ['<a_1>', '<b_2>'], '1': ['<a_1>', '<b_2>'],
                              '2': ['<a_0>', '<b_5>']}))
  data = _data(3)
  item_ids = ids.PrecomputedIds(path=str(path), item_offset=1).fit(data)
  np.testing.assert_array_equal(item_ids.codes[1:], [[1, 2, 0], [1, 2, 1], [0, 5, 0]])
  assert item_ids.level_sizes == (2, 6, 2) and item_ids.num_collisions == 0
  with pytest.raises(ValueError, match='outside 1..3; check item_offset'):
    ids.PrecomputedIds(path=str(path), item_offset=2).fit(data)
  with pytest.raises(ValueError, match='no codes for 1 items'):
    ids.PrecomputedIds(path=str(path)).fit(_data(4))


def test_lcrec_beauty_index_covers_the_catalog():
  from conftest import data_dir_or_skip
  data_dir = data_dir_or_skip('amazon-2014', 'beauty', 'lcrec_index.json')
  data = sequences.load_amazon('beauty', data_dir)
  item_ids = ids.PrecomputedIds(path='amazon-2014/beauty/lcrec_index.json',
                                data_dir=data_dir).fit(data)
  # 12,088 distinct tuples for 12,101 items (README): the collision level fixes 13.
  assert len(np.unique(item_ids.codes[1:, :4], axis=0)) == 12088
  assert item_ids.num_levels == 5 and item_ids.num_collisions == 0
  assert item_ids.level_sizes[:4] == (256, 256, 256, 256)


def test_sequential_ids_follow_first_appearance():
  data = sequences.SequenceData('seq', 5, (np.array([4, 2, 4, 3, 3], np.int32),
                                           np.array([5, 2, 1, 3, 3], np.int32)))
  item_ids = ids.SequentialIds(num_levels=2, codebook_size=3).fit(data)
  # Training parts: [4, 2, 4] and [5, 2, 1] -> order 4, 2, 5, 1, then unseen 3.
  keys = item_ids.codes[1:, 0] * 3 + item_ids.codes[1:, 1]
  np.testing.assert_array_equal(keys, [3, 1, 4, 0, 2])


def test_sinkhorn_spreads_the_last_level_and_cuts_collisions():
  data, _ = _clustered_data(400)
  plain = ids.ResidualKMeansIds(num_levels=2, codebook_size=8, dedup=False).fit(data)
  balanced = ids.ResidualKMeansIds(num_levels=2, codebook_size=8, dedup=False,
                                   sinkhorn_last_level=True).fit(data)
  usage_plain = np.bincount(plain.codes[1:, 1], minlength=8)
  usage_bal = np.bincount(balanced.codes[1:, 1], minlength=8)
  assert usage_bal.max() <= 1.3 * 400 / 8 < usage_plain.max()
  # Items sharing a first-level code get distinct last codes while a bucket fits.
  buckets = np.bincount(balanced.codes[1:, 0])
  assert balanced.num_collisions == sum(max(0, b - 8) for b in buckets)
  assert balanced.num_collisions < plain.num_collisions


def test_sinkhorn_assignment_is_near_uniform_and_prefers_near_codes():
  from genrec.ids.kmeans import sinkhorn_assign
  rng = np.random.default_rng(0)
  dist = rng.random((1000, 10))
  dist[:, 0] -= 0.5  # every point prefers code 0
  codes = sinkhorn_assign(dist)
  counts = np.bincount(codes, minlength=10)
  assert counts.min() >= 80 and counts.max() <= 120
  # Each point still goes to a relatively near code.
  assert dist[np.arange(1000), codes].mean() < dist.mean()


def test_rqvae_trains_gives_unique_ids_and_is_deterministic(tmp_path):
  data, group = _clustered_data(300)
  scheme = ids.RQVAEIds(num_levels=2, codebook_size=8, latent_dim=8, hidden=(32,),
                        num_steps=150, batch_size=128, dead_code_every=50,
                        learning_rate=3e-3)
  item_ids = scheme.fit(data)
  assert item_ids.num_levels == 3 and item_ids.num_collisions == 0
  np.testing.assert_array_equal(scheme.fit(data).codes, item_ids.codes)
  # Reconstruction improves on the untrained model's.
  untrained = dataclasses.replace(scheme, num_steps=0).fit(data)
  assert item_ids.info['reconstruction_mse'] < untrained.info['reconstruction_mse']
  first = item_ids.codes[1:, 0]
  purity = np.mean([np.bincount(first[group == g]).max() / (group == g).sum()
                    for g in range(6)])
  assert purity > 0.6
  item_ids.save(str(tmp_path))
  assert ids.ItemIds.load(str(tmp_path)).info == json.loads(json.dumps(item_ids.info))


def test_collaborative_ids_group_items_consumed_together():
  rng = np.random.default_rng(0)
  # Two communities of 60 items each; users stay within one community.
  seqs = []
  for u in range(400):
    base = 1 if u % 2 else 61
    seqs.append((base + rng.integers(0, 60, 8)).astype(np.int32))
  data = sequences.SequenceData('communities', 120, tuple(seqs))
  scheme = ids.CollaborativeIds(num_levels=2, branching=2)
  item_ids = scheme.fit(data)
  first = item_ids.codes[1:, 0]
  assert len(set(first[:60])) == 1 and len(set(first[60:])) == 1 and first[0] != first[60]
  assert item_ids.num_collisions == 0
  np.testing.assert_array_equal(scheme.fit(data).codes, item_ids.codes)


def test_content_is_described_by_what_it_reads():
  """results.json's id_content: the default content is text where a data set
  has item text, else attributes; a named content function says itself."""
  import functools
  from genrec.ids import content
  without = dataclasses.replace(sequences.make_synthetic(num_users=5, num_items=6, seed=0),
                                item_text=None)
  with_text = dataclasses.replace(without, item_text=(None,) + ({'title': 't'},) * 6)
  assert content.describe(content.item_content, with_text) == 'text'
  assert content.describe(content.item_content, without) == 'attributes'
  assert content.describe(functools.partial(content.attribute_tfidf, dim=8), with_text) == (
      'attributes')


def test_product_quantization_ids_are_long_unique_and_opq_lowers_the_error(tmp_path):
  """PQ codes: num_levels unordered codes per item (plus the collision level),
  deterministic, round-trippable; OPQ's rotation never raises the
  quantization error of plain PQ on the same content, and its codes still
  follow the content's groups."""
  data, group = _clustered_data()
  pq = ids.ProductQuantizationIds(num_levels=8, codebook_size=16, opq_iters=0).fit(data)
  opq_scheme = ids.ProductQuantizationIds(num_levels=8, codebook_size=16, opq_iters=3)
  opq = opq_scheme.fit(data)
  assert opq.num_levels == 9 and opq.level_sizes[:8] == (16,) * 8
  assert opq.scheme.startswith('opq-8x16') and pq.scheme.startswith('pq-8x16')
  np.testing.assert_array_equal(opq_scheme.fit(data).codes, opq.codes)
  tokens = opq.items_to_tokens(np.arange(1, 301))
  np.testing.assert_array_equal(opq.tokens_to_items(tokens), np.arange(1, 301))
  assert opq.info['quantization_mse'] <= pq.info['quantization_mse'] * 1.001
  assert opq.info['quantization_mse'] < opq.info['content_variance']
  # Items of one latent group share more codes than items of different groups.
  body = opq.codes[1:, :8]
  same = (body[:, None] == body[None]).mean(-1)
  together = group[:, None] == group[None]
  assert same[together].mean() > 2 * same[~together].mean()
  with pytest.raises(ValueError, match='exceeds the'):
    ids.ProductQuantizationIds(num_levels=10_000).fit(data)


def test_long_ids_map_back_to_their_items_without_integer_overflow():
  """32 codes of 256 have no int64 mixed-radix key; tokens still map back to
  the one item that carries them, and unknown tuples to 0."""
  rng = np.random.default_rng(0)
  codes = np.full((2001, 33), -1, np.int32)
  codes[1:, :32] = rng.integers(0, 256, (2000, 32))
  codes[1:, 32] = 0
  codes[7, :32], codes[7, 32] = codes[3, :32], 1  # same content, told apart by the last level
  item_ids = ids.ItemIds(codes=codes, level_sizes=(256,) * 32 + (2,), scheme='long')
  assert item_ids.num_collisions == 0
  table = item_ids.token_table()
  np.testing.assert_array_equal(item_ids.tokens_to_items(table[1:]), np.arange(1, 2001))
  other = table[[5]].copy()
  other[0, 4] = table[6, 4] if table[6, 4] != other[0, 4] else other[0, 4] + 1
  assert item_ids.tokens_to_items(other)[0] == 0
  np.testing.assert_array_equal(item_ids.tokens_to_items(table[[[1, 7], [3, 0]]]), [[1, 7], [3, 0]])
