"""SEAL, the retrieval method: n-grams of the corpus as identifiers
(Bevilacqua et al. 2022), trained and evaluated here; what serving shares of
it (the document scorer, the prefixes of decoded n-grams, the retriever of an
export) is the core's `genrec.seal`.

The encoder-decoder generates n-grams of the corpus, decoded by beam search
that an FM-index over the corpus keeps on n-grams that occur
(`fm_index.NGramConstraint`), then mapped to documents and scored by
`SealScorer` (the formula is in its docstring). Training targets are n-grams
of relevant documents: the title (the document's first tokens) and the spans
that overlap the query most for train queries; for every document, random
spans as pseudo-queries with the title and another span as targets.
"""

import dataclasses
import os
import time

import gin
import numpy as np

from genrec import fm_index, models, partitioning, seal
from genrec.retrieval import corpus, method, run_folder, seq2seq


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SealTasks:
  """SEAL's training targets.

  Attributes:
    ngram_len: tokens of every target n-gram and of decoded n-grams (SEAL: 10).
    spans_per_pair: per (train query, relevant doc), the doc's n-grams that
      share the most distinct tokens with the query (besides its title).
    num_spans: per document, random spans used as pseudo-queries, each paired
      with the title and with another random n-gram of the document.
    span_input_len: tokens of those pseudo-query spans.
  """
  ngram_len: int = 10
  spans_per_pair: int = 3
  num_spans: int = 3
  span_input_len: int = 32


# SEAL's scorer is the core's (the server scores with it too); registered here
# so that gin files bind it as seal_method.SealScorer.alpha = ..., and calls
# to SealScorer() here take those bindings.
SealScorer = gin.configurable(seal.SealScorer)


def _overlapping_ngrams(doc: np.ndarray, query: np.ndarray, length: int, k: int
                        ) -> list[np.ndarray]:
  """The k non-overlapping windows of `doc` that contain the most distinct query tokens."""
  if len(doc) <= length:
    return [doc]
  q = set(query.tolist())
  hit = np.isin(doc, list(q))
  scores = np.array([len(set(doc[s:s + length][hit[s:s + length]].tolist()))
                     for s in range(len(doc) - length + 1)])
  chosen = []
  for s in np.argsort(-scores, kind='stable'):
    if scores[s] == 0 or len(chosen) == k:
      break
    if all(abs(s - t) >= length for t in chosen):
      chosen.append(int(s))
  return [doc[s:s + length] for s in chosen]


def examples(tc: corpus.TokenizedCollection, tasks: SealTasks, split: str, input_len: int,
             seed: int, pseudo: list[list[np.ndarray]] | None = None
             ) -> dict[str, np.ndarray]:
  """(query -> title and the n-grams that overlap it most) for the train
  queries of `split` and the documents' `pseudo` queries, and (random span ->
  title, another span) per document."""
  rng = np.random.default_rng(seed)
  n = tasks.ngram_len
  inputs, targets = [], []
  for doc, queries in zip(tc.doc_tokens, pseudo or ()):
    for query in queries:
      for t in [doc[:n]] + _overlapping_ngrams(doc, query, n, tasks.spans_per_pair):
        inputs.append(query)
        targets.append(t)
  index = tc.collection.doc_index()
  for q, docs in tc.collection.qrels[split].items():
    query = tc.query_tokens[q]
    for d in sorted(docs):
      doc = tc.doc_tokens[index[d]]
      for t in [doc[:n]] + _overlapping_ngrams(doc, query, n, tasks.spans_per_pair):
        inputs.append(query)
        targets.append(t)
  for doc in tc.doc_tokens:
    for span in method.random_spans(doc, tasks.span_input_len, tasks.num_spans, rng):
      inputs += [span, span]
      targets += [doc[:n], method.random_spans(doc, n, 1, rng)[0]]
  return seq2seq.arrays(inputs, targets, input_len, n)


def rescore(qids: list[str], seqs: np.ndarray, logp: np.ndarray, scorer: seal.SealScorer,
            tc: corpus.TokenizedCollection, fm: fm_index.FMIndex, k: int = 100
            ) -> method.Retrieved:
  """Ranks documents for decoded n-grams (seqs int [q, beam, L], per-token
  log-probs [q, beam, L]) with `scorer`.

  Returns ({qid: doc ids}, {qid: scores}, figures for the table row).
  """
  ranked, scores, num_ngrams = {}, {}, []
  for i, q in enumerate(qids):
    grams = seal.prefix_ngrams(seqs[i], logp[i], scorer.min_ngram_len)
    num_ngrams.append(len(grams))
    docs, sc = scorer.rank(grams, fm, k)
    ranked[q] = [tc.collection.doc_ids[d] for d in docs]
    scores[q] = sc.tolist()
  return ranked, scores, {'ngrams_per_query': round(float(np.mean(num_ngrams)), 1),
                          'docs_per_query': round(float(np.mean([len(r) for r in
                                                                ranked.values()])), 1)}


def search(pred, params, mesh, inputs: np.ndarray, allowed: fm_index.NGramConstraint,
           beam_size: int, ngram_len: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """SEAL's beam search over n-grams that occur (`allowed`, on the host):
  (sequences int [q, beam, ngram_len], per-token log-probs [q, beam, ngram_len])."""
  def run(batch, rows):
    beams = pred.predict_host_constrained(params, batch['x'], beam_size, ngram_len, allowed)
    return (partitioning.gather(beams.sequences, rows),
            partitioning.gather(beams.token_log_probs, rows))
  outs = partitioning.map_batches({'x': inputs}, batch_size, mesh, run)
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


# ---------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------
@gin.configurable
@dataclasses.dataclass(frozen=True)
class Seal(method.GenerativeMethod):
  """SEAL (module docstring).

  Attributes:
    tasks: the training targets (default: `SealTasks()` with its gin bindings).
    scorer: the document scorer (default: `SealScorer()` with its bindings).
    beam_size: beams of the n-gram search.
  """
  tasks: SealTasks = dataclasses.field(default_factory=SealTasks)
  scorer: seal.SealScorer = dataclasses.field(default_factory=SealScorer)
  beam_size: int = 15
  name = 'seal'  # not a field: one SEAL

  def index(self, tc: corpus.TokenizedCollection, *, pretrained: bool,
            model_dir: str | None, cache_dir: str | None,
            fm: fm_index.FMIndex | None = None) -> 'SealIndex':
    del pretrained, model_dir, cache_dir  # the identifiers are the text's n-grams
    v = tc.text_vocab_size
    if fm is None:
      fm = fm_index.FMIndex.build(tc.doc_tokens, v)
    elif fm.vocab_size != v or fm.num_tokens != sum(map(len, tc.doc_tokens)):
      raise ValueError(f'The FM-index given ({fm.num_tokens} tokens, vocab {fm.vocab_size}) '
                       f'is not over {tc.collection.name} in these tokens ({tc.tokens}): build '
                       'it from tc.doc_tokens, or pass fm=None.')
    return SealIndex(self, tc, fm)

  def tasks_repr(self) -> str:
    return method.settings_repr(self.tasks)

  @property
  def plain_identifiers(self) -> str:
    return 'n-grams'

  @property
  def base_identifiers(self) -> str:
    return self.plain_identifiers

  @property
  def identifiers(self) -> str:
    return f'{self.plain_identifiers} ({self.tasks.ngram_len} tokens)'

  def for_run(self, run: dict) -> 'Seal':
    return dataclasses.replace(self, beam_size=run['beam_size'],
                               tasks=dataclasses.replace(self.tasks, ngram_len=run['ngram_len']),
                               scorer=SealScorer(**run['scorer']))

  def check_replay(self, replay_steps: int) -> None:
    if replay_steps:
      raise ValueError('SEAL needs no replay training to retrieve new documents (its '
                       'identifiers are their n-grams, found by the rebuilt FM-index): set '
                       'replay_steps = 0.')

  def grow(self, retriever: str, run: dict, old: corpus.Collection, new: corpus.Collection,
           both: corpus.Collection, sp, params: dict, config: models.ModelConfig, *,
           cache_dir: str | None, atomic_rows: str) -> method.Grown:
    """The FM-index rebuilt over the old and new documents; the model is
    unchanged (its identifiers are the documents' own n-grams)."""
    del retriever, run, old, new, cache_dir, atomic_rows
    t0 = time.time()
    tc = corpus.TokenizedCollection.build(both, sp)
    fm = fm_index.FMIndex.build(tc.doc_tokens, sp.get_piece_size())
    return method.Grown(SealIndex(self, tc, fm), params, config,
                        {'index_s': time.time() - t0}, {'atomic_rows': None})


@dataclasses.dataclass
class SealIndex(method.Index):
  """SEAL over a collection: its FM-index (`fm`)."""
  method: Seal
  tc: corpus.TokenizedCollection
  fm: fm_index.FMIndex

  @property
  def vocab_used(self) -> int:
    return self.tc.text_vocab_size

  def examples(self, split: str, input_len: int, seed: int,
               pseudo: list[list[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    return examples(self.tc, self.method.tasks, split, input_len, seed, pseudo)

  def init_label(self) -> str:
    return ' (+ word embeddings)'

  def warm_start(self, params: dict) -> dict:
    """n-grams of WordPiece tokens: the output table starts as the checkpoint's own."""
    words = params['bert']['word']['embedding']
    params['embed'][:len(words)] = words
    return params

  def save_serving_inputs(self, workdir: str, config: models.ModelConfig,
                          input_len: int, extra: dict | None = None) -> None:
    run_folder.save_serving_inputs(
        workdir, self.tc, self.method.name, config, input_len, self.method.beam_size,
        fm=self.fm, extra={'ngram_len': self.method.tasks.ngram_len,
                           'scorer': dataclasses.asdict(self.method.scorer), **(extra or {})})

  def retrieve(self, model: method.Model, qids: list[str], inputs: np.ndarray,
               workdir: str | None = None, tag: str | None = None) -> method.Retrieved:
    allowed = fm_index.NGramConstraint(self.fm, model.pred.config.vocab_size)
    seqs, logp = search(model.pred, model.params, model.mesh, inputs, allowed,
                        self.method.beam_size, self.method.tasks.ngram_len, model.batch_size)
    # The decoded n-grams and their token log-probs, so that the scorer can be
    # studied again without the model (`rescore`).
    if tag:
      np.savez(os.path.join(workdir, f'{tag}_ngrams.npz'), qids=np.array(qids), seqs=seqs,
               logp=logp)
    ranked, scores, extra = rescore(qids, seqs, logp, self.method.scorer, self.tc, self.fm)
    extra['constraint_ms_per_query'] = round(allowed.seconds / len(qids) * 1e3, 1)
    return ranked, scores, extra
