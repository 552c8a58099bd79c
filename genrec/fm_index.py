"""FM-index over a tokenized corpus, for n-gram identifiers (SEAL).

The indexed text is every document reversed, each followed by a separator
(token 0), so that extending an n-gram of a document by one token to the
right is one backward-search step:

  text = rev(doc_0) 0 rev(doc_1) 0 ... rev(doc_{D-1}) 0

Built from well-kept libraries: the suffix array by `pydivsufsort`
(libdivsufsort), rank by `wavelet-matrix`'s WaveletMatrix over the
Burrows-Wheeler transform (BWT); the tokens that follow an n-gram are counted
from its BWT slice with numpy (`FMIndex.followers`).

For an n-gram g (tokens >= 1), `range(g)` is the suffix-array interval of
rev(g) in the text; its size is the number of occurrences of g in the
corpus, the symbols of the BWT in that interval are the tokens that follow
g in some document (`next_tokens`), and the suffix array maps the interval
back to positions and documents (`locate`).
"""

import dataclasses
import json
import os
import time

import numpy as np
import pydivsufsort
from wavelet_matrix import WaveletMatrix

SEPARATOR = 0
FORMAT_VERSION = 1
# Suffix-array intervals larger than this have their followers counted when
# the index is built or loaded (see FMIndex.followers).
PRECOMPUTED_OVER = 1 << 17
# Below this size an interval's BWT slice is sorted; above, counted.
_SORT_UNDER = 2048


def _count_symbols(symbols: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(distinct non-separator symbols ascending, their counts) of a BWT slice."""
  if len(symbols) < _SORT_UNDER:
    tokens, counts = np.unique(symbols, return_counts=True)
  else:
    all_counts = np.bincount(symbols, minlength=vocab_size)
    tokens = np.flatnonzero(all_counts)
    counts = all_counts[tokens]
  keep = tokens != SEPARATOR
  return tokens[keep].astype(np.int64), counts[keep].astype(np.int64)


@dataclasses.dataclass
class FMIndex:
  text: np.ndarray  # int32 [n]: reversed documents, each followed by SEPARATOR
  suffix_array: np.ndarray  # int64 [n]
  doc_starts: np.ndarray  # int64 [num_docs + 1]: start of each document in `text`
  vocab_size: int  # tokens are in [1, vocab_size)

  def __post_init__(self):
    n = len(self.text)
    # BWT[i] = text[SA[i] - 1]; the suffix at 0 wraps to the last symbol (a separator).
    self.bwt = self.text[(self.suffix_array - 1) % n]
    self.wavelet = WaveletMatrix(self.bwt)
    counts = np.bincount(self.text, minlength=self.vocab_size)
    self.c = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # symbols < c
    self._precompute_frequent()

  # -- building -----------------------------------------------------------------
  @classmethod
  def build(cls, docs: list[np.ndarray] | list[list[int]], vocab_size: int | None = None
            ) -> 'FMIndex':
    """Indexes `docs`, each a sequence of token ids >= 1."""
    if not len(docs):
      raise ValueError('FMIndex.build needs at least one document.')
    parts, starts, pos = [], [], 0
    for i, d in enumerate(docs):
      d = np.asarray(d, np.int64)
      if d.ndim != 1 or (d < 1).any():
        raise ValueError(f'document {i}: token ids must be a 1-d sequence of ints >= 1 '
                         f'(0 is the separator)')
      starts.append(pos)
      parts.append(np.concatenate([d[::-1], [SEPARATOR]]))
      pos += len(d) + 1
    starts.append(pos)
    text = np.concatenate(parts).astype(np.int32)
    top = int(text.max()) + 1
    vocab_size = vocab_size or top
    if top > vocab_size:
      raise ValueError(f'token {top - 1} is outside vocab_size {vocab_size}.')
    sa = np.asarray(pydivsufsort.divsufsort(text), np.int64)
    return cls(text, sa, np.asarray(starts, np.int64), vocab_size)

  # -- queries ------------------------------------------------------------------
  def extend(self, interval: tuple[int, int], token: int) -> tuple[int, int]:
    """The interval of the n-gram extended by `token` on the right."""
    lo, hi = interval
    base = int(self.c[token])
    return (base + self.wavelet.rank(value=int(token), end=lo),
            base + self.wavelet.rank(value=int(token), end=hi))

  def full_range(self) -> tuple[int, int]:
    """The interval of the empty n-gram (every position)."""
    return 0, len(self.text)

  def range(self, ngram) -> tuple[int, int]:
    """Suffix-array interval [lo, hi) of the n-gram (empty when hi <= lo)."""
    interval = self.full_range()
    for tok in ngram:
      if not 1 <= tok < self.vocab_size:
        return 0, 0
      interval = self.extend(interval, tok)
      if interval[1] <= interval[0]:
        return 0, 0
    return interval

  def count(self, ngram) -> int:
    """Occurrences of the n-gram in the corpus."""
    lo, hi = self.range(ngram)
    return max(0, hi - lo)

  def next_tokens(self, ngram) -> tuple[np.ndarray, np.ndarray]:
    """Tokens that follow the n-gram somewhere in the corpus, with how often.

    Returns (tokens int64 [k], counts int64 [k]), tokens ascending; for the
    empty n-gram, every token of the corpus with its frequency.
    """
    return self.followers(self.range(ngram))

  def followers(self, interval: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, counts) that extend the n-gram of a suffix-array interval, tokens
    ascending (the distinct non-separator BWT symbols in the interval).

    Cost is bounded by the interval's size, not by how many distinct tokens
    it holds: a small interval sorts its BWT slice, a medium one counts it
    (O(size + vocab) in numpy), and the few intervals over `PRECOMPUTED_OVER`
    positions (the n-grams of the most frequent tokens, which thousands of
    tokens follow) were counted once when the index was built or loaded.
    """
    lo, hi = interval
    size = hi - lo
    if size <= 0:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if size > PRECOMPUTED_OVER:
      found = self._frequent.get((lo, hi))
      if found is not None:
        return found
    return _count_symbols(self.bwt[lo:hi], self.vocab_size)

  def _precompute_frequent(self) -> None:
    """Followers of every interval over PRECOMPUTED_OVER positions: from the
    empty n-gram down, each such interval's frequent extensions."""
    self._frequent = {}
    todo = [self.full_range()]
    while todo:
      lo, hi = todo.pop()
      tokens, counts = _count_symbols(self.bwt[lo:hi], self.vocab_size)
      tokens.flags.writeable = counts.flags.writeable = False  # shared by every caller
      self._frequent[lo, hi] = (tokens, counts)
      todo += [self.extend((lo, hi), int(t)) for t in tokens[counts > PRECOMPUTED_OVER]]

  def locate(self, ngram, limit: int | None = None) -> np.ndarray:
    """Documents that contain the n-gram (int64, ascending, distinct).

    `limit` caps the occurrences read (the first ones in suffix order).
    """
    lo, hi = self.range(ngram)
    if hi <= lo:
      return np.zeros(0, np.int64)
    if limit is not None:
      hi = min(hi, lo + limit)
    pos = self.suffix_array[lo:hi]
    return np.unique(np.searchsorted(self.doc_starts, pos, side='right') - 1)

  # -- facts ----------------------------------------------------------------------
  @property
  def num_docs(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_tokens(self) -> int:
    """Corpus tokens (separators excluded)."""
    return len(self.text) - self.num_docs

  def memory_bytes(self) -> int:
    """Arrays held in Python (text, suffix array, BWT, offsets, the frequent
    intervals' followers; the wavelet matrix's own bit vectors are not
    counted: the library does not report them)."""
    frequent = sum(t.nbytes + c.nbytes for t, c in self._frequent.values())
    return frequent + sum(a.nbytes for a in (self.text, self.suffix_array, self.bwt,
                                             self.doc_starts, self.c))

  # -- persistence ----------------------------------------------------------------
  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, 'text.npy'), self.text)
    np.save(os.path.join(directory, 'suffix_array.npy'), self.suffix_array)
    np.save(os.path.join(directory, 'doc_starts.npy'), self.doc_starts)
    with open(os.path.join(directory, 'fm_index.json'), 'w') as f:
      json.dump({'format_version': FORMAT_VERSION, 'vocab_size': self.vocab_size,
                 'num_docs': self.num_docs, 'num_tokens': self.num_tokens}, f)

  @classmethod
  def load(cls, directory: str) -> 'FMIndex':
    meta_path = os.path.join(directory, 'fm_index.json')
    try:
      with open(meta_path) as f:
        meta = json.load(f)
      text = np.load(os.path.join(directory, 'text.npy'))
      sa = np.load(os.path.join(directory, 'suffix_array.npy'))
      starts = np.load(os.path.join(directory, 'doc_starts.npy'))
    except (OSError, ValueError) as e:
      raise ValueError(f'{directory} does not hold a readable FM-index ({e}); rebuild it '
                       'with FMIndex.build(...).save(directory).') from e
    if meta.get('format_version') != FORMAT_VERSION:
      raise ValueError(f'{meta_path}: format_version {meta.get("format_version")}, expected '
                       f'{FORMAT_VERSION}; rebuild the index.')
    if len(sa) != len(text) or len(starts) != meta['num_docs'] + 1 or starts[-1] != len(text):
      raise ValueError(f'{directory}: the index files disagree in size (corrupt or mixed '
                       'files); rebuild the index.')
    return cls(text, sa, starts, int(meta['vocab_size']))


class NGramConstraint:
  """`decoding.HostAllowedFn` that keeps every beam on an n-gram of the corpus.

  Token ids of the decoder are the corpus token ids (a beam may take token t
  after prefix g iff g + [t] occurs in some document). Each prefix's
  suffix-array interval is memoized, so a step extends each beam's interval
  by one backward-search step instead of re-reading the whole prefix, and so
  are the tokens that follow it: beams and queries that share a prefix (at
  the first step, all of them) read the index once. The memo lives as long
  as the object: make one per batch of queries (a server) or per evaluation.
  """

  def __init__(self, index: FMIndex, vocab_size: int):
    if vocab_size < index.vocab_size:
      raise ValueError(f'decoder vocabulary {vocab_size} is smaller than the index '
                       f'vocabulary {index.vocab_size}.')
    self.index = index
    self.vocab_size = vocab_size
    self._intervals: dict[tuple[int, ...], tuple[int, int]] = {(): index.full_range()}
    self._followers: dict[tuple[int, ...], np.ndarray] = {}
    self.seconds = 0.0  # host time spent in __call__ (the constraint's cost)

  def interval(self, prefix: tuple[int, ...]) -> tuple[int, int]:
    found = self._intervals.get(prefix)
    if found is None:
      lo, hi = self.interval(prefix[:-1])
      tok = prefix[-1]
      found = (self.index.extend((lo, hi), tok) if hi > lo and 1 <= tok < self.index.vocab_size
               else (0, 0))
      self._intervals[prefix] = found
    return found

  def __call__(self, seqs: np.ndarray) -> np.ndarray:
    """int [batch, beam, step] -> bool [batch, beam, vocab]."""
    t0 = time.perf_counter()
    batch, beam = seqs.shape[:2]
    allowed = np.zeros((batch, beam, self.vocab_size), bool)
    for b in range(batch):
      for k in range(beam):
        prefix = tuple(seqs[b, k].tolist())
        tokens = self._followers.get(prefix)
        if tokens is None:
          tokens = self._followers[prefix] = self.index.followers(self.interval(prefix))[0]
        allowed[b, k, tokens] = True
    self.seconds += time.perf_counter() - t0
    return allowed
