"""Pseudo-queries for generative retrieval (DSI-QG, Zhuang et al. 2022).

A query generator, an encoder-decoder of its own, reads a document's first
tokens and writes a query. It is trained on the training qrels (document ->
each of its queries) and on the collection itself (a document's text after
its title -> the title), then writes `num_queries` queries per document: the
beams of one beam search over the text vocabulary, or (`decoding = 'sample'`)
independent top-k samples, as DSI-QG draws them (beams of a small generator
mostly repeat its training queries; samples are more diverse). DSI and SEAL add them to
their indexing examples (`dsi.examples`, `seal_method.examples`), so
that the retrieval model sees query-like inputs for every document, not
only for the few with training queries.

Pseudo-queries can also be read from a file (`QueryGeneration.queries_file`,
JSON lines {"doc_id", "text"}): another run's `queries.jsonl` (every
generation writes one beside its token arrays) or a doc2query model's output.
The retriever tokenizes their text with its own tokenizer, so a run with the
pretrained encoder's WordPiece vocabulary uses queries written by a
SentencePiece generator.

Targets end with EOS and are padded with zeros that count in the loss, so
the generator learns to emit padding after EOS and a beam's score is its
query's log-probability. The generator and its queries are kept under a
digest of everything that defines them (settings, documents, training
qrels): the methods of one table share them, and held-out queries never
reach the generator.
"""

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable

from absl import logging
import gin
import jax
import numpy as np

from genrec import models, partitioning
from genrec.retrieval import corpus, seq2seq

EOS = 1  # corpus.train_sentencepiece: 0 pad, 1 eos, 2 unk


@gin.configurable
@dataclasses.dataclass(frozen=True)
class QueryGeneration:
  """What pseudo-queries the indexing examples get.

  Attributes:
    num_queries: queries per document (0: none): the beams of one search, or
      samples.
    query_len: tokens of a generated query, EOS included.
    num_train_steps: the generator's training budget (steps of batch_size).
    batch_size: the generator's batch.
    beam_batch_size: documents per beam search.
    queries_file: JSON lines {"doc_id": ..., "text": ...}, read instead of
      generating (num_queries > 0 then caps the queries per document, 0 keeps
      them all); documents without a line get none.
    decoding: 'beam' (the num_queries best beams) or 'sample' (num_queries
      top-k samples; repeats within a document are dropped). Both read the
      same trained generator (of the same other settings, num_queries
      included: to try several N, sample the largest once and cap it through
      queries_file).
    top_k, temperature: of 'sample' (DSI-QG: top-k 10).
    filter_top_k: with > 0, round-trip filtering (Promptagator): a
      pseudo-query is kept only if BM25 over the collection ranks its own
      document within the top `filter_top_k` for it. A generator that
      memorized its training queries writes them for other documents too;
      those rarely find their document and are dropped. 0 keeps every query.
  """
  num_queries: int = 0
  query_len: int = 24
  num_train_steps: int = 2000
  batch_size: int = 64
  beam_batch_size: int = 32
  queries_file: str = ''
  decoding: str = 'beam'
  top_k: int = 10
  temperature: float = 1.0
  filter_top_k: int = 0

  def __post_init__(self):
    if self.decoding not in DECODINGS:
      raise ValueError(f'QueryGeneration.decoding must be one of {DECODINGS}, got '
                       f'{self.decoding!r}.')
    if self.top_k < 1 or self.temperature <= 0:
      raise ValueError(f'QueryGeneration: top_k must be >= 1 and temperature > 0, got '
                       f'top_k={self.top_k}, temperature={self.temperature}.')
    if self.filter_top_k < 0:
      raise ValueError(f'QueryGeneration.filter_top_k must be >= 0 (0: no filter), got '
                       f'{self.filter_top_k}.')

  def _repr(self, leave_out: tuple[str, ...]) -> str:
    """The dataclass repr without the fields `leave_out`."""
    fields = [f for f in dataclasses.fields(self) if f.name not in leave_out]
    return f'{type(self).__name__}(' + ', '.join(
        f'{f.name}={getattr(self, f.name)!r}' for f in fields) + ')'

  def generator_repr(self) -> str:
    """What defines the trained generator (its cache digest): the settings
    without how its queries are decoded or filtered, so that beams and samples
    share one generator and caches from before `decoding` keep their folder."""
    return self._repr(_DECODING_FIELDS + ('filter_top_k',))

  def settings_repr(self) -> str:
    """These settings in a retriever's run settings: without the decoding
    fields for beams and without an unset filter (as before they existed, so
    earlier run folders resume)."""
    base = self.generator_repr() if self.decoding == 'beam' else self._repr(('filter_top_k',))
    return base + (f' + filter_top_k={self.filter_top_k}' if self.filter_top_k else '')

  def queries_stem(self) -> str:
    """The file name (no extension) of the generated queries in the
    generator's folder: 'queries' for beams, 'queries-sample-k<k>-t<t>'."""
    if self.decoding == 'beam':
      return 'queries'
    return f'queries-sample-k{self.top_k}-t{self.temperature:g}'


DECODINGS = ('beam', 'sample')
_DECODING_FIELDS = ('decoding', 'top_k', 'temperature')


def generator_examples(tc: corpus.TokenizedCollection, split: str, input_len: int,
                       query_len: int) -> dict[str, np.ndarray]:
  """(document's first tokens -> query) per `split` qrels pair, and
  (document's text after its title -> title) per document with one."""
  index = tc.collection.doc_index()
  inputs, targets = [], []
  for q, docs in sorted(tc.collection.qrels[split].items()):
    for d in sorted(docs):
      inputs.append(tc.doc_tokens[index[d]])
      targets.append(tc.query_tokens[q])
  for toks, t in zip(tc.doc_tokens, tc.title_lengths):
    if t and len(toks) > t:
      inputs.append(toks[t:])
      targets.append(toks[:t])
  targets = [np.append(np.asarray(x)[:query_len - 1], EOS) for x in targets]
  arrays = seq2seq.arrays(inputs, targets, input_len, query_len)
  arrays['decoder_loss_weights'] = np.ones_like(arrays['decoder_loss_weights'])
  return arrays


def _digest(tc: corpus.TokenizedCollection, split: str, settings: dict) -> str:
  h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
  for toks in tc.doc_tokens:
    h.update(np.asarray(toks, np.int32).tobytes() + b'|')
  h.update(repr(sorted((q, sorted(d)) for q, d in tc.collection.qrels[split].items())).encode())
  return h.hexdigest()[:16]


def generate(tc: corpus.TokenizedCollection, qg: QueryGeneration, directory: str,
             model_config: models.ModelConfig, optimizer_fn: Callable,
             mesh_fn: Callable, input_len: int, train_split: str = 'train', seed: int = 0,
             log_every_steps: int = 200) -> list[list[np.ndarray]]:
  """`qg.num_queries` pseudo-queries (token arrays, EOS cut) per document.

  The generator is trained in <directory>/query_generator-<digest>/ (a second
  call with the same inputs restores it) and its queries are saved there as
  queries.npz.
  """
  if qg.num_queries < 1:
    raise ValueError(f'QueryGeneration.num_queries must be >= 1 to generate, got '
                     f'{qg.num_queries}.')
  vocab = tc.text_vocab_size
  config = dataclasses.replace(model_config, vocab_size=-(-vocab // 128) * 128)
  settings = {'generator': qg.generator_repr(), 'collection': tc.collection.name,
              'input_len': input_len, 'train_split': train_split}
  workdir = os.path.join(directory, f'query_generator-{_digest(tc, train_split, settings)}')
  saved = os.path.join(workdir, f'{qg.queries_stem()}.npz')
  if os.path.exists(saved):
    with np.load(saved) as z:
      tokens = z['tokens']
  else:
    arrays = generator_examples(tc, train_split, input_len, qg.query_len)
    tr, mesh, state, _, _ = seq2seq.train(
        workdir, 'query generator', arrays, config, optimizer_fn, mesh_fn,
        qg.num_train_steps, qg.batch_size, seed, log_every_steps,
        {**settings, 'examples': len(arrays['encoder_input_tokens'])})
    inputs = seq2seq.pad(tc.doc_tokens, input_len)

    rng, batches = jax.random.key(seed + 2), itertools.count()

    def run(batch, rows):
      if qg.decoding == 'sample':  # each batch of documents its own stream
        tokens, _ = tr.sample(state.params, batch['x'], qg.num_queries, qg.query_len,
                              jax.random.fold_in(rng, next(batches)), qg.top_k,
                              qg.temperature)
      else:
        tokens, _ = tr.predict(state.params, batch['x'], qg.num_queries, qg.query_len)
      return partitioning.gather(tokens, rows)
    outs = partitioning.map_batches({'x': inputs}, qg.beam_batch_size, mesh, run)
    tokens = np.concatenate(outs)  # [docs, num_queries, query_len]
    if jax.process_index() == 0:
      np.savez(saved + '.tmp.npz', tokens=tokens)
      os.replace(saved + '.tmp.npz', saved)
    logging.info('Pseudo-queries (%s): %d per document for %d documents in %s', qg.decoding,
                 qg.num_queries, len(tokens), workdir)
  text = os.path.join(workdir, f'{qg.queries_stem()}.jsonl')
  unique = qg.decoding == 'sample'  # samples may repeat; beams differ (before EOS)
  if jax.process_index() == 0 and not os.path.exists(text):  # also for older caches
    _write_text(tc, tokens, vocab, text, unique)
  return [_cut(beams, vocab, unique) for beams in tokens]


def _cut(beams: np.ndarray, vocab: int, unique: bool = False) -> list[np.ndarray]:
  """A document's beams or samples as queries: cut at EOS, text pieces only,
  empty ones dropped, and with `unique` repeats too (the first kept)."""
  queries, seen = [], set()
  for seq in beams:
    end = np.flatnonzero(seq == EOS)
    seq = seq[:end[0]] if len(end) else seq
    seq = seq[(seq > EOS) & (seq < vocab)].astype(np.int32)
    if len(seq) and not (unique and seq.tobytes() in seen):
      seen.add(seq.tobytes())
      queries.append(seq)
  return queries


def _write_text(tc: corpus.TokenizedCollection, tokens: np.ndarray, vocab: int, path: str,
                unique: bool) -> None:
  """The generated queries as text (`queries_file` format), for reading and
  for retrievers with another tokenizer."""
  with open(path + '.tmp', 'w') as f:
    for doc_id, beams in zip(tc.collection.doc_ids, tokens):
      for text in decode(tc, _cut(beams, vocab, unique)):
        f.write(json.dumps({'doc_id': doc_id, 'text': text}) + '\n')
  os.replace(path + '.tmp', path)


def file_digest(path: str) -> str:
  """Of a queries_file's bytes: a run's settings change with its content."""
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def read(tc: corpus.TokenizedCollection, qg: QueryGeneration) -> list[list[np.ndarray]]:
  """The pseudo-queries of `qg.queries_file`, per document of `tc` (in
  order), tokenized by `tc`'s tokenizer; at most `qg.num_queries` each when
  that is > 0."""
  path = qg.queries_file
  if not os.path.exists(path):
    raise FileNotFoundError(f'QueryGeneration.queries_file {path!r} does not exist: give a '
                            'JSON-lines file of {"doc_id", "text"} pseudo-queries (every '
                            'generation writes one: <cache>/query_generator-*/queries.jsonl).')
  index = tc.collection.doc_index()
  out = [[] for _ in range(tc.collection.num_docs)]
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        doc_id, text = str(record['doc_id']), record['text']
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} line {n}: expected a JSON object with "doc_id" and "text" '
                         f'({type(e).__name__}: {e}).') from None
      if doc_id not in index:
        raise ValueError(f'{path} line {n}: doc_id {doc_id!r} is not a document of '
                         f'{tc.collection.name}; the file was written for another collection?')
      queries = out[index[doc_id]]
      toks = np.asarray(tc.sp.encode(str(text)), np.int32)
      if len(toks) and (qg.num_queries < 1 or len(queries) < qg.num_queries):
        queries.append(toks)
  if not any(out):
    raise ValueError(f'{path} has no pseudo-query for any document of {tc.collection.name}.')
  return out


def diversity(tc: corpus.TokenizedCollection, pseudo: list[list[np.ndarray]],
              train_split: str = 'train') -> dict[str, float]:
  """How varied the pseudo-queries are: the share of distinct token sequences
  among all of them (over the collection), and the share that copy a
  `train_split` query verbatim (a generator that memorized its training
  queries writes few new ones)."""
  every = [q.tobytes() for queries in pseudo for q in queries]
  train = {np.asarray(tc.query_tokens[q], np.int32).tobytes()
           for q in tc.collection.qrels[train_split]}
  n = max(len(every), 1)
  return {'pseudo_distinct': round(len(set(every)) / n, 4),
          'pseudo_train_copies': round(sum(q in train for q in every) / n, 4)}


def round_trip_filter(tc: corpus.TokenizedCollection, pseudo: list[list[np.ndarray]],
                      top_k: int) -> list[list[np.ndarray]]:
  """The pseudo-queries for which BM25 over `tc`'s documents (in its own
  tokens) ranks their document within the top `top_k` (QueryGeneration
  .filter_top_k)."""
  index = corpus.BM25(tc.doc_tokens, tc.text_vocab_size)
  return [[q for q in queries if i in index.search(q.tolist(), top_k)]
          for i, queries in enumerate(pseudo)]


def decode(tc: corpus.TokenizedCollection, queries: list[np.ndarray]) -> list[str]:
  """The text of token arrays (to read what the generator wrote)."""
  return [tc.sp.decode(q.tolist()) for q in queries]
