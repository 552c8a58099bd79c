import numpy as np
import pytest

from genrec import fm_index
from genrec.fm_index import FMIndex


def _corpus(seed, num_docs=12, vocab=9, max_len=30):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, rng.integers(1, max_len)) for _ in range(num_docs)], vocab


def _occurrences(docs, gram):
  """Brute force: (doc, position) of every occurrence of `gram`."""
  k = len(gram)
  return [(d, i) for d, doc in enumerate(docs) for i in range(len(doc) - k + 1)
          if list(doc[i:i + k]) == list(gram)]


def _grams(docs, rng, n=60):
  """n-grams that occur (sampled from the docs) and some that may not (random)."""
  out = []
  for _ in range(n):
    doc = docs[rng.integers(len(docs))]
    i = rng.integers(len(doc))
    out.append(list(doc[i:i + rng.integers(1, 5)]))
    out.append(list(rng.integers(1, 9, rng.integers(1, 4))))
  return out


# (PRECOMPUTED_OVER, _SORT_UNDER): the defaults (every interval of these
# corpora is sorted), counted and precomputed intervals, every interval
# precomputed.
@pytest.mark.parametrize('seed,thresholds', [(0, None), (1, None), (2, (8, 4)), (3, (0, 0))])
def test_count_next_tokens_and_locate_match_brute_force(seed, thresholds, monkeypatch):
  if thresholds:
    monkeypatch.setattr(fm_index, 'PRECOMPUTED_OVER', thresholds[0])
    monkeypatch.setattr(fm_index, '_SORT_UNDER', thresholds[1])
  docs, vocab = _corpus(seed)
  index = FMIndex.build(docs, vocab)
  assert index.num_docs == len(docs) and index.num_tokens == sum(map(len, docs))
  assert (len(index._frequent) > 5) == bool(thresholds)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed + 10)
  for gram in _grams(docs, rng):
    occ = _occurrences(docs, gram)
    assert index.count(gram) == len(occ), gram
    np.testing.assert_array_equal(index.locate(gram), sorted({d for d, _ in occ}))
    following = {}
    for d, i in occ:
      if i + len(gram) < len(docs[d]):
        tok = int(docs[d][i + len(gram)])
        following[tok] = following.get(tok, 0) + 1
    tokens, counts = index.next_tokens(gram)
    assert dict(zip(tokens.tolist(), counts.tolist())) == following, gram


def test_empty_ngram_and_out_of_vocabulary_tokens():
  docs, vocab = _corpus(3)
  index = FMIndex.build(docs, vocab)
  tokens, counts = index.next_tokens([])
  flat = np.concatenate(docs)
  assert dict(zip(tokens.tolist(), counts.tolist())) == {
      int(t): int((flat == t).sum()) for t in np.unique(flat)}
  assert index.count([vocab + 5]) == 0 and index.count([0]) == 0
  assert index.locate([vocab + 5]).size == 0


def test_ngrams_never_cross_document_boundaries():
  index = FMIndex.build([[1, 2, 3], [4, 5]])
  assert index.count([3, 4]) == 0 and index.count([2, 3]) == 1
  tokens, _ = index.next_tokens([3])
  assert tokens.size == 0  # 3 ends its document


def test_save_load_round_trip_and_corrupt_files(tmp_path):
  docs, vocab = _corpus(4)
  index = FMIndex.build(docs, vocab)
  index.save(str(tmp_path))
  again = FMIndex.load(str(tmp_path))
  for gram in ([1], [2, 3], [5, 5, 1]):
    assert again.count(gram) == index.count(gram)
    np.testing.assert_array_equal(again.locate(gram), index.locate(gram))
  np.save(tmp_path / 'suffix_array.npy', np.zeros(3, np.int64))
  with pytest.raises(ValueError, match='disagree in size'):
    FMIndex.load(str(tmp_path))
  (tmp_path / 'text.npy').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='rebuild'):
    FMIndex.load(str(tmp_path))


def test_bad_documents_are_refused():
  with pytest.raises(ValueError, match='document 1'):
    FMIndex.build([[1, 2], [3, 0, 4]])
  with pytest.raises(ValueError, match='at least one document'):
    FMIndex.build([])
  with pytest.raises(ValueError, match='outside vocab_size'):
    FMIndex.build([[1, 9]], vocab_size=5)


def test_ngram_constrained_beam_search_only_generates_corpus_ngrams():
  import jax
  import jax.numpy as jnp
  from genrec import decoding
  from genrec.fm_index import NGramConstraint

  vocab, steps, batch, beam = 6, 3, 2, 25
  rng = np.random.default_rng(7)
  docs = [rng.integers(1, vocab, rng.integers(2, 9)) for _ in range(6)]
  index = FMIndex.build(docs, vocab)
  table = jax.random.normal(jax.random.key(3), (batch, steps, vocab, vocab)) * 3

  def logits_fn(tokens, cache, step):  # a random model: depends on query, step, last token
    return table[jnp.arange(tokens.shape[0]) // beam, step, tokens], cache
  step_fn = jax.jit(lambda beams, allowed, step: decoding.constrained_step(
      logits_fn, beams, allowed, step))  # one compiled step for every position
  beams = decoding.host_constrained_beam_search(
      step_fn, decoding.init_beams(batch, beam, steps, jnp.zeros(batch * beam)), steps,
      NGramConstraint(index, vocab))
  seqs, scores = np.asarray(beams.sequences), np.asarray(beams.scores)
  token_logp = np.asarray(beams.token_log_probs)
  # Exhaustive: every 3-gram of the corpus scored by the same model, best first.
  logp = np.asarray(jax.nn.log_softmax(table, -1))
  grams = {tuple(int(t) for t in d[i:i + steps]) for d in docs for i in range(len(d) - steps + 1)}
  for q in range(batch):
    def score(g):
      prev = [0, *g[:-1]]
      return sum(logp[q, s, prev[s], g[s]] for s in range(steps))
    best = sorted(grams, key=lambda g: -score(g))
    finite = np.isfinite(scores[q])
    assert finite.sum() == min(beam, len(grams))
    got = [tuple(s) for s in seqs[q][finite]]
    assert all(index.count(g) > 0 for g in got)
    # beam (25) >= every 2-gram prefix here, so the search is exact.
    assert len({g[:2] for g in grams}) <= beam
    assert got == best[:len(got)]
    for g, row in zip(got, token_logp[q][finite]):  # each token's own log-prob
      prev = [0, *g[:-1]]
      np.testing.assert_allclose(row, [logp[q, s, prev[s], g[s]] for s in range(steps)],
                                 rtol=1e-5, atol=1e-5)
