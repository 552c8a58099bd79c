"""SEAL's n-gram identifiers at inference, shared by training-time evaluation
(`genrec.retrieval.seal_method`) and the server (`genrec.serve`): the document
scorer (`SealScorer`), the prefixes of decoded n-grams it reads
(`prefix_ngrams`), and `SealRetriever`, which answers queries from a SEAL
serving directory (`genrec.retrieval.export`) with the FM-index on the host.

numpy, jax and the core only (no flax, optax, orbax, seqio, TensorFlow or gin):
what a server imports.
"""

import collections
import dataclasses
import os

import numpy as np

from genrec import decoding, fm_index
from genrec.artifact import Artifact


@dataclasses.dataclass(frozen=True)
class SealScorer:
  """SEAL's document score from generated n-grams (Bevilacqua et al. 2022, 3.3).

  For a generated n-gram g with conditional log-probability log P(g|q) (sum of
  its tokens' log-probs under the model) and corpus frequency F(g):

    P(g)    = (F(g) + smoothing) / (corpus tokens)        unconditional
    w(g, q) = max(0, log [P(g|q) (1 - P(g))] / [P(g) (1 - P(g|q))])

  so an n-gram scores high when the model wants it more than the corpus
  frequency explains (SEAL's unconditional-probability correction). A
  document d collects the generated n-grams that occur in it, K(d), taken in
  decreasing w; each adds

    W(d, q) += w(g, q) ** alpha * cover(g),
    cover(g) = 1 - beta + beta * |tokens(g) - tokens already covered in d| / |tokens(g)|

  (the coverage weight: an n-gram whose tokens earlier, better n-grams of the
  same document already matched adds only (1 - beta) of its weight).
  Documents are ranked by W; those reached by no n-gram are not returned.

  Attributes:
    alpha, beta: the exponent and coverage weight above.
    min_ngram_len: shorter prefixes of the decoded n-grams are not used.
    locate_limit: occurrences read per n-gram when mapping it to documents
      (very frequent n-grams carry little weight anyway).
    smoothing: added to F(g).
  """
  alpha: float = 2.0
  beta: float = 0.8
  min_ngram_len: int = 1
  locate_limit: int = 2000
  smoothing: float = 0.0

  def weights(self, ngrams: dict[tuple[int, ...], float], index: fm_index.FMIndex
              ) -> dict[tuple[int, ...], float]:
    """{n-gram: log P(g|q)} -> {n-gram: w(g, q) > 0}."""
    total = index.num_tokens
    out = {}
    for g, logp in ngrams.items():
      freq = index.count(g) + self.smoothing
      if freq <= 0:
        continue
      p_cond = min(float(np.exp(logp)), 1 - 1e-7)
      p = min(freq / total, 1 - 1e-7)
      w = np.log(p_cond) + np.log1p(-p) - np.log(p) - np.log1p(-p_cond)
      if w > 0:
        out[g] = float(w)
    return out

  def rank(self, ngrams: dict[tuple[int, ...], float], index: fm_index.FMIndex, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (document rows, scores) for one query's generated n-grams."""
    w = self.weights(ngrams, index)
    covered: dict[int, set] = collections.defaultdict(set)
    scores: dict[int, float] = collections.defaultdict(float)
    for g in sorted(w, key=lambda g: (-w[g], g)):
      toks = set(g)
      for d in index.locate(g, self.locate_limit).tolist():
        new = len(toks - covered[d]) / len(toks)
        scores[d] += w[g] ** self.alpha * (1 - self.beta + self.beta * new)
        covered[d] |= toks
    docs = sorted(scores, key=lambda d: (-scores[d], d))[:k]
    return np.array(docs, np.int64), np.array([scores[d] for d in docs])


def prefix_ngrams(seqs: np.ndarray, token_logp: np.ndarray, min_len: int
                  ) -> dict[tuple[int, ...], float]:
  """Every prefix (>= min_len tokens) of the decoded n-grams of one query, with
  its log-probability (the best over beams that share it).

  seqs int [beam, L]; token_logp float [beam, L] per-token log-probs.
  """
  out = {}
  cum = np.cumsum(token_logp, axis=-1)
  for b in range(seqs.shape[0]):
    for n in range(min_len, seqs.shape[1] + 1):
      if not np.isfinite(cum[b, n - 1]) or seqs[b, n - 1] <= 0:
        break
      g = tuple(int(t) for t in seqs[b, :n])
      out[g] = max(out.get(g, -np.inf), float(cum[b, n - 1]))
  return out


class SealRetriever:
  """Queries -> documents, from a SEAL serving directory (`genrec.retrieval.export`).

  The directory holds two functions of the model's parameters: its main one
  starts the beam search (query token ids int32 [batch, input_len]
  -> the decoding state: sequences, scores, per-token log-probs, the
  self-attention cache, the cross-attention keys/values (and, with a
  pretrained encoder, the pooled query embedding) and the query mask)
  and `step` advances it by one token given the tokens each beam may take.
  Between steps, on the host, the FM-index says which tokens continue an
  n-gram of the corpus (`fm_index.NGramConstraint`, exactly as in training-
  time evaluation); after `ngram_len` steps `SealScorer` ranks the documents
  that contain the decoded n-grams' prefixes.

  `retriever(query)` -> (documents int32 [batch, k]: document numbers 1..n,
  best first, 0 where fewer were reached; scores float32 [batch, k]: the
  scorer's). All-zero rows (a batcher's padding) are not decoded on the host
  nor scored.
  """

  def __init__(self, artifact: Artifact):
    m = artifact.manifest
    if m.get('method') != 'seal':
      raise ValueError(f'{artifact.directory} is not a SEAL retriever (method '
                       f'{m.get("method")!r}).')
    self.artifact, self.step = artifact, artifact.function('step')
    self.index = fm_index.FMIndex.load(os.path.join(artifact.directory, m['fm_index']))
    self.scorer = SealScorer(**m['scorer'])
    self.k, self.num_steps, self.vocab_size = m['k'], m['ngram_len'], m['vocab_size']

  def decode(self, query: np.ndarray) -> decoding.Beams:
    """The final beams (numpy) of `query` int32 [batch, input_len]."""
    live = (np.asarray(query) > 0).any(1)
    constraint = fm_index.NGramConstraint(self.index, self.vocab_size)  # memo per call

    def allowed_fn(seqs):
      allowed = np.ones((*seqs.shape[:2], self.vocab_size), bool)  # padding: anything
      allowed[live] = constraint(seqs[live])
      return allowed

    # The beams' 4 arrays, the query's decoding context (cross-attention keys/
    # values; with a pretrained encoder also its pooled embedding), its mask.
    *state, valid = self.artifact.main(query, to_numpy=False)
    state, context = state[:4], state[4:]

    def step_fn(beams, allowed, step):
      return decoding.Beams(*self.step(*beams, *context, valid, allowed, np.int32(step),
                                       to_numpy=False))
    beams = decoding.host_constrained_beam_search(step_fn, decoding.Beams(*state),
                                                  self.num_steps, allowed_fn)
    return decoding.Beams(*(np.asarray(x) for x in beams[:3]), None)

  def __call__(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query = np.asarray(query)
    beams = self.decode(query)
    documents = np.zeros((len(query), self.k), np.int32)
    scores = np.zeros((len(query), self.k), np.float32)
    for i in np.flatnonzero((query > 0).any(1)):
      grams = prefix_ngrams(beams.sequences[i], beams.token_log_probs[i],
                            self.scorer.min_ngram_len)
      docs, sc = self.scorer.rank(grams, self.index, self.k)
      documents[i, :len(docs)] = docs + 1
      scores[i, :len(docs)] = sc
    return documents, scores
