import numpy as np
import pytest

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


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_count_next_tokens_and_locate_match_brute_force(seed):
  docs, vocab = _corpus(seed)
  index = FMIndex.build(docs, vocab)
  assert index.num_docs == len(docs) and index.num_tokens == sum(map(len, docs))
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
