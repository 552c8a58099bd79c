import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec import constraints, decoding, ids
from genrec.data import sequences

SIZES, OFFSETS = (3, 40, 5), (2, 5, 45)
VOCAB = 64


def _random_codes(n, seed):
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, k, n) for k in SIZES], axis=1)


def test_allowed_and_children_match_brute_force():
  codes = _random_codes(60, 0)
  trie = constraints.PrefixTrie.from_codes(codes, SIZES, OFFSETS)
  valid = {tuple(c) for c in codes}
  prefixes = [sorted({c[:l] for c in valid}) for l in range(len(SIZES) + 1)]
  assert trie.num_nodes() == [len(p) for p in prefixes[:-1]]
  for l in range(len(SIZES)):
    for node, prefix in enumerate(prefixes[l]):
      allowed = np.asarray(trie.allowed(jnp.array(node), l))
      expected = [any(c[:l] == prefix and c[l] == code for c in valid) for code in range(SIZES[l])]
      np.testing.assert_array_equal(allowed, expected)
      for code in np.flatnonzero(expected):
        child = int(trie.child(jnp.array(node), l, jnp.array(code)))
        assert prefixes[l + 1][child] == prefix + (code,)


def test_node_of_walks_token_sequences():
  codes = _random_codes(30, 1)
  trie = constraints.PrefixTrie.from_codes(codes, SIZES, OFFSETS)
  tokens = jnp.asarray(codes + np.array(OFFSETS))
  ordered = sorted({tuple(c[:2]) for c in codes})
  nodes = np.asarray(trie.node_of(tokens, 2))
  assert [ordered[n] for n in nodes] == [tuple(c[:2]) for c in codes]


def test_bad_codes_are_refused():
  with pytest.raises(ValueError, match='level size'):
    constraints.PrefixTrie.from_codes(np.array([[0, 40, 0]]), SIZES, OFFSETS)
  with pytest.raises(ValueError, match='codes must be'):
    constraints.PrefixTrie.from_codes(np.zeros((0, 3)), SIZES, OFFSETS)


def _random_model_logits(seed):
  """A random 'model': logits depend on the query, step and previous token."""
  table = jax.random.normal(jax.random.key(seed), (4, len(SIZES), VOCAB, VOCAB)) * 4

  def fn(tokens, cache, step):
    query = jnp.arange(tokens.shape[0]) // (tokens.shape[0] // 4)
    return table[query, step, tokens], cache
  return fn


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_constrained_beam_search_yields_only_valid_ids(seed):
  codes = _random_codes(25, seed)
  trie = constraints.PrefixTrie.from_codes(codes, SIZES, OFFSETS)
  valid = {tuple(c + np.array(OFFSETS)) for c in codes}
  beam = 10
  free, _ = jax.jit(lambda: decoding.beam_search(_random_model_logits(seed), jnp.zeros(4 * beam),
                                                  4, beam, len(SIZES)))()
  assert not all(tuple(s) in valid for s in np.asarray(free).reshape(-1, 3))  # a random model errs
  seqs, scores = jax.jit(lambda t: decoding.beam_search(
      _random_model_logits(seed), jnp.zeros(4 * beam), 4, beam, len(SIZES), t.constrain))(trie)
  assert np.isfinite(np.asarray(scores)).all()
  for q in range(4):
    got = [tuple(s) for s in np.asarray(seqs[q])]
    assert all(s in valid for s in got) and len(set(got)) == beam


def test_constrained_equals_unconstrained_when_every_id_is_valid():
  sizes, offsets = (4, 4, 4), (0, 0, 0)
  every = np.array(list(itertools.product(range(4), repeat=3)))
  trie = constraints.PrefixTrie.from_codes(every, sizes, offsets)
  table = jax.random.normal(jax.random.key(5), (2, 3, 4, 4))

  def fn(tokens, cache, step):
    return table[jnp.arange(tokens.shape[0]) // 8, step, tokens], cache
  free = decoding.beam_search(fn, jnp.zeros(16), 2, 8, 3)
  constrained = decoding.beam_search(fn, jnp.zeros(16), 2, 8, 3, trie.constrain)
  np.testing.assert_array_equal(free[0], constrained[0])
  np.testing.assert_allclose(free[1], constrained[1])


def test_trie_of_fitted_ids_covers_every_item_and_handles_the_collision_level():
  data = sequences.make_synthetic(num_users=50, num_items=200, seed=0)
  item_ids = ids.ResidualKMeansIds(num_levels=2, codebook_size=4).fit(data)
  assert item_ids.num_levels == 3  # collision level added
  trie = constraints.PrefixTrie.from_ids(item_ids)
  tokens = jnp.asarray(item_ids.token_table()[1:])
  last = trie.node_of(tokens, 2)
  code = tokens[:, 2] - trie.level_offsets[2]
  assert np.asarray(trie.allowed(last, 2)[jnp.arange(len(code)), code]).all()
  assert trie.memory_bytes() > 0
