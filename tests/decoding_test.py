import itertools

import jax
import jax.numpy as jnp
import numpy as np

from genrec import decoding

V, T = 6, 3


def _table(seed):
  # Logits of the next token depend on the whole prefix: a random table over prefixes.
  return jax.random.normal(jax.random.key(seed), (2, V ** T, V)) * 3


def _tokens_to_logits(table):
  # The cache holds each beam's prefix code so far (reordered with the beams).
  def fn(tokens, prefix, step):  # tokens [batch * beam]: position `step` of the input
    if step:
      prefix = prefix + tokens * V ** (T - step)
    query = jnp.arange(tokens.shape[0]) // (tokens.shape[0] // 2)
    return table[query, prefix], prefix
  return fn


def _search(table, beam, constrain=None):
  cache = jnp.zeros(2 * beam, jnp.int32)
  return jax.jit(lambda: decoding.beam_search(_tokens_to_logits(table), cache, 2, beam, T,
                                              constrain))()


def _exhaustive(table, constraint=None):
  logp = np.asarray(jax.nn.log_softmax(table, -1))
  out = []
  for q in range(2):
    scores = {}
    for seq in itertools.product(range(V), repeat=T):
      if constraint is not None and not constraint(seq):
        continue
      s = 0.0
      for i, tok in enumerate(seq):
        key = 0
        for j in range(T):
          key = key * V + (seq[j] if j < i else 0)
        s += float(logp[q, key, tok])
      scores[seq] = s
    out.append(sorted(scores.items(), key=lambda kv: -kv[1]))
  return out


def test_beam_equals_exhaustive_search_when_beam_covers_the_space():
  table = _table(0)
  seqs, scores = _search(table, V ** 2)
  best = _exhaustive(table)
  for q in range(2):
    # With beam >= V^(T-1) nothing is pruned before the last step: exact top-k.
    expected = best[q][:V ** 2]
    np.testing.assert_array_equal(seqs[q], [s for s, _ in expected])
    np.testing.assert_allclose(scores[q], [v for _, v in expected], rtol=1e-5)


def test_constraint_hook_is_respected_and_matches_constrained_exhaustive():
  table = _table(1)
  allowed = lambda seq: sum(seq) % 2 == 0 and seq[0] != 0

  def constrain(seqs, step, log_probs):  # parity of the sum must be even at the end
    tok = jnp.arange(V)
    if step == 0:
      ok = jnp.broadcast_to(tok != 0, log_probs.shape)
    elif step == T - 1:
      parity = seqs[..., :step].sum(-1) % 2  # [batch, beam]
      ok = (parity[..., None] + tok) % 2 == 0
    else:
      ok = jnp.ones(log_probs.shape, bool)
    return jnp.where(ok, log_probs, -jnp.inf)

  seqs, _ = _search(table, 36, constrain)
  assert all(allowed(tuple(int(x) for x in s)) for s in np.asarray(seqs).reshape(-1, T))
  best = _exhaustive(table, allowed)
  for q in range(2):
    np.testing.assert_array_equal(seqs[q][:5], [s for s, _ in best[q][:5]])


def test_beams_are_distinct_and_sorted():
  seqs, scores = _search(_table(2), 10)
  assert (np.diff(np.asarray(scores), axis=1) <= 1e-6).all()
  for q in range(2):
    assert len({tuple(s) for s in np.asarray(seqs[q])}) == 10


def test_sort_top_k_equals_lax_top_k_with_ties_and_infinities():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 6, (5, 40)).astype(np.float32)  # many ties
  x[0, :7] = -np.inf
  x[1] = -np.inf
  for k in (1, 3, 10, 40):
    want = jax.lax.top_k(jnp.asarray(x), k)
    got = decoding.sort_top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_top_k_sampling_draws_within_the_top_k_and_scores_under_the_model():
  """decoding.sample: every drawn token is among the k most likely at its
  step, scores are the samples' log-probabilities, the same key draws the
  same samples, and top-1 sampling is greedy decoding (beam 1)."""
  table, n = _table(0), 64
  logp = np.asarray(jax.nn.log_softmax(table, -1))

  def draw(k, key):
    cache = jnp.zeros(2 * n, jnp.int32)
    return jax.jit(lambda: decoding.sample(_tokens_to_logits(table), cache, 2, n, T,
                                           jax.random.key(key), top_k=k))()
  seqs, scores = map(np.asarray, draw(2, 0))
  for q in range(2):
    for seq, score in zip(seqs[q], scores[q]):
      total, key = 0.0, 0
      for i, tok in enumerate(seq):
        row = logp[q, key]
        assert tok in np.argsort(-row)[:2]
        total += row[tok]
        key += int(tok) * V ** (T - 1 - i)
      np.testing.assert_allclose(score, total, rtol=1e-5)
  assert len({tuple(s) for s in seqs[0]}) > 1  # samples differ
  np.testing.assert_array_equal(seqs, np.asarray(draw(2, 0)[0]))
  greedy = np.asarray(draw(1, 3)[0])
  np.testing.assert_array_equal(greedy, np.repeat(np.asarray(_search(table, 1)[0]), n, axis=1))
