"""Generative document retrieval: DSI docids and SEAL n-gram identifiers.

One encoder-decoder (`genrec.models`) reads a query's SentencePiece tokens and
generates an identifier of a document:

* DSI (`method='dsi_atomic' | 'dsi_naive' | 'dsi_semantic'`): a docid, decoded
  by beam search constrained to existing docids (`constraints.PrefixTrie`).
  atomic: one token per document; naive: the digits of the document's
  number, zero-padded (a fixed-length version of DSI's naive string docid);
  semantic: hierarchical k-means over MiniLM embeddings of the documents'
  text (`ids.HierarchicalKMeansIds`, branching 10 as in DSI, plus a
  collision level; or residual k-means, `DsiTasks.semantic_scheme`). Docid
  tokens follow the text pieces in one vocabulary.
  Training mixes the indexing task (document prefix, title and random spans
  -> docid) with the retrieval task (train queries -> docids of their
  relevant documents).
* SEAL (`method='seal'`): n-grams of the corpus, decoded by beam search that
  an FM-index over the corpus keeps on n-grams that occur
  (`fm_index.NGramConstraint`), then mapped to documents and scored by
  `SealScorer` (the formula is in its docstring). Training targets are
  n-grams of relevant documents: the title (the document's first tokens) and
  the spans that overlap the query most for train queries; for every
  document, random spans as pseudo-queries with the title and another span
  as targets.

`train_and_evaluate` trains one method and evaluates it on a qrels split;
`python -m genrec.benchmarks.retrieval` tabulates every method beside BM25.
Test qrels are only used for evaluation.
"""

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence

from absl import logging
import gin
import jax
import numpy as np

from genrec import (config_check, constraints, fm_index, loop, models, partitioning, seal,
                    text_encoder, trainer)
from genrec.data import sequences
from genrec.retrieval import corpus, pseudo_queries, seq2seq
from genrec.ids import (EOS_ID, HierarchicalKMeansIds, ItemIds, NUM_RESERVED_TOKENS,
                         ResidualKMeansIds)
from genrec.ids.extend import residual_codebooks

METHODS = ('dsi_atomic', 'dsi_naive', 'dsi_semantic', 'seal')


def _random_spans(tokens: np.ndarray, length: int, num: int, rng: np.random.Generator
                  ) -> list[np.ndarray]:
  if len(tokens) <= length:
    return [tokens] * min(num, 1)
  starts = rng.integers(0, len(tokens) - length + 1, num)
  return [tokens[s:s + length] for s in starts]


# ---------------------------------------------------------------------------
# DSI docids
# ---------------------------------------------------------------------------
@gin.configurable
@dataclasses.dataclass(frozen=True)
class DsiTasks:
  """DSI's training mixture.

  Attributes:
    num_spans: random spans of each document used as indexing inputs (besides
      its first `input_len` tokens and its title).
    retrieval_repeats: copies of each (train query, relevant doc) pair, to
      balance the retrieval task against the indexing task.
    semantic_branching: clusters per node of the semantic docids (DSI: 10).
    semantic_levels: k-means levels of the semantic docids (a collision level
      is added below them when leaves are shared).
    semantic_scheme: 'hierarchical' (DSI: k-means within each parent cluster)
      or 'residual' (RQ-KMeans: level l clusters what levels < l left of the
      embedding, `semantic_branching` codes per level shared by all parents).
      With the pretrained encoder, residual docids start from their
      codebooks: the docid token of code j at level l is the level's centroid
      j, so the untrained model scores each level by the query's similarity to
      that part of the document's embedding.
    title_len: with > 0, a second identifier per document: the first
      `title_len` tokens of its title, EOS-padded (a document without a title
      has its docid only). Every example that targets a docid has a twin that
      targets the title prefix; a second constrained beam search decodes title
      prefixes (a trie of the documents' prefixes, exact on the device, in the
      text tokens, disjoint from the docid tokens) and a document's score is
      the log of its probability summed over both identifiers (a prefix shared
      by k documents gives each 1/k of its beam's), as the model was trained
      to put mass on either (`fuse_identifier_views`). Default architecture.
  """
  num_spans: int = 5
  retrieval_repeats: int = 4
  semantic_branching: int = 10
  semantic_levels: int = 3
  semantic_scheme: str = 'hierarchical'
  title_len: int = 0


# Each method's plain identifiers, as its rows name them; `identifiers_label`
# adds a run's settings, and the retrieval grid shows only those additions.
PLAIN_IDENTIFIERS = {'dsi_atomic': 'atomic docid', 'dsi_naive': 'naive docid (digits)',
                     'dsi_semantic': 'semantic docid', 'seal': 'n-grams'}


def identifiers_label(method: str, tasks: DsiTasks, ngram_len: int = 0) -> str:
  """What a method's identifiers are, for its row: 'atomic docid', 'naive
  docid (digits)', 'semantic docid, residual k-means 2 x 128', 'n-grams (10
  tokens)'; '+ title prefix (n tokens)' with `tasks.title_len`."""
  plain = PLAIN_IDENTIFIERS[method]
  if method == 'seal':
    return f'{plain} ({ngram_len} tokens)'
  if method == 'dsi_semantic':
    plain += (f', {tasks.semantic_scheme} k-means '
              f'{tasks.semantic_levels} x {tasks.semantic_branching}')
  return plain + (f' + title prefix ({tasks.title_len} tokens)' if tasks.title_len else '')


def docids(method: str, tc: corpus.TokenizedCollection, tasks: DsiTasks,
           cache_dir: str | None = None, model_dir: str | None = None) -> ItemIds:
  """The docids of a DSI method; item id i + 1 is document i. Semantic docids
  cluster the documents' embeddings by the sentence encoder in `model_dir`
  (default MiniLM)."""
  c = tc.collection
  if method == 'dsi_atomic':
    return ItemIds(np.arange(-1, c.num_docs)[:, None], (c.num_docs,), 'atomic')
  if method == 'dsi_naive':
    numbers = [int(d) if d.isdigit() else i + 1 for i, d in enumerate(c.doc_ids)]
    if len(set(numbers)) != len(numbers):  # ids are not distinct numbers: use row numbers
      numbers = list(range(1, c.num_docs + 1))
    width = len(str(max(numbers)))
    digits = np.array([[int(ch) for ch in str(n).zfill(width)] for n in numbers], np.int32)
    return ItemIds(np.vstack([np.full((1, width), -1), digits]), (10,) * width,
                   f'naive-{width}-digits')
  if method == 'dsi_semantic':
    emb = document_embeddings(c, cache_dir, model_dir)
    content_fn = lambda _: np.vstack([emb[:1] * 0, emb])  # noqa: E731 (row 0: padding)
    if tasks.semantic_scheme == 'residual':
      return ResidualKMeansIds(tasks.semantic_levels, tasks.semantic_branching,
                               content_fn=content_fn).fit(None)
    if tasks.semantic_scheme != 'hierarchical':
      raise ValueError(f"DsiTasks.semantic_scheme must be 'hierarchical' or 'residual', not "
                       f'{tasks.semantic_scheme!r}.')
    return HierarchicalKMeansIds(tasks.semantic_levels, tasks.semantic_branching,
                                 content_fn=content_fn).fit(None)
  raise ValueError(f'Unknown DSI method {method!r}; use one of {METHODS[:3]}.')


def document_embeddings(c: corpus.Collection, cache_dir: str | None = None,
                        model_dir: str | None = None) -> np.ndarray:
  """MiniLM embeddings [num_docs, 384] of the documents' text (or those of the
  sentence-transformers folder `model_dir`); with `cache_dir` stored under a
  digest of the texts (so they travel to hosts without the encoder package)."""
  texts = [corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)]
  path = None
  if cache_dir:
    # Without model_dir, the key of the files cached before model_dir existed.
    key = texts if model_dir is None else texts + [model_dir]
    digest = hashlib.sha256('\x00'.join(key).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f'{c.name}-doc-minilm-{digest}.npy')
    if os.path.exists(path):
      return np.load(path)
  emb = text_encoder.encode(texts, model_dir)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path, emb)
  return emb


def dsi_examples(tc: corpus.TokenizedCollection, ids: ItemIds, shift: int, tasks: DsiTasks,
                 split: str, input_len: int, seed: int,
                 pseudo: list[list[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
  """Indexing (document prefix, title, random spans and the document's
  `pseudo` queries -> docid) + retrieval (train queries of `split` -> docid)
  examples."""
  rng = np.random.default_rng(seed)
  table = ids.token_table() + shift  # row i + 1: tokens of document i
  inputs, targets, doc_rows = [], [], []  # doc_rows: each example's document
  for i, toks in enumerate(tc.doc_tokens):
    docid = table[i + 1]
    pieces = [toks[:input_len]] + _random_spans(toks, input_len, tasks.num_spans, rng)
    if tc.title_lengths[i]:
      pieces.append(toks[:tc.title_lengths[i]])
    pieces += pseudo[i] if pseudo else []
    inputs += pieces
    targets += [docid] * len(pieces)
    doc_rows += [i] * len(pieces)
  index = tc.collection.doc_index()
  for q, docs in tc.collection.qrels[split].items():
    for d in sorted(docs):
      inputs += [tc.query_tokens[q]] * tasks.retrieval_repeats
      targets += [table[index[d] + 1]] * tasks.retrieval_repeats
      doc_rows += [index[d]] * tasks.retrieval_repeats
  if tasks.title_len:  # every docid example's twin targets the title prefix
    titles, has_title = title_codes(tc, tasks.title_len)
    twins = [(x, titles[i]) for x, i in zip(inputs, doc_rows) if has_title[i]]
    inputs += [x for x, _ in twins]
    targets += [t for _, t in twins]
  return seq2seq.arrays(inputs, targets, input_len, max(ids.num_levels, tasks.title_len))


# Fields added to the task classes after runs were recorded: at their default
# they stay out of the run settings, so those run folders still resume.
_LATER_FIELDS = ('title_len',)


def settings_repr(tasks) -> str:
  """The dataclass repr of `tasks` without later-added fields at their default."""
  shown = [f for f in dataclasses.fields(tasks)
           if not (f.name in _LATER_FIELDS and getattr(tasks, f.name) == f.default)]
  return (f'{type(tasks).__name__}('
          + ', '.join(f'{f.name}={getattr(tasks, f.name)!r}' for f in shown) + ')')


def title_codes(tc: corpus.TokenizedCollection, title_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [num_docs, title_len]: each document's first `title_len` title
  tokens, EOS-padded; bool [num_docs]: whether it has a title)."""
  codes = np.full((tc.collection.num_docs, title_len), EOS_ID, np.int32)
  for i, (toks, n) in enumerate(zip(tc.doc_tokens, tc.title_lengths)):
    codes[i, :min(n, title_len)] = toks[:min(n, title_len)]
  return codes, tc.title_lengths > 0


def fuse_identifier_views(views: Sequence[tuple[list[list[int]], np.ndarray]], k: int = 100
                          ) -> tuple[list[list[int]], list[list[float]]]:
  """Documents ranked by their probability summed over identifier views.

  Each view is (per query, per beam: the document rows the beam identifies
  (several when documents share it); beam log-probs float [q, beams]); a beam
  of k documents gives each 1/k of its probability. Returns per query the top
  `k` rows and their log summed probabilities, best first (ties: lower row).
  """
  ranked, scores = [], []
  for q in range(len(views[0][0])):
    log_mass: dict[int, float] = {}  # summed in log space: beams far down do not underflow
    for docs, logp in views:
      for rows, lp in zip(docs[q], logp[q]):
        if not rows or not np.isfinite(lp):  # no document, or a beam that found nothing
          continue
        share = float(lp) - np.log(len(rows))
        for r in rows:
          log_mass[r] = float(np.logaddexp(log_mass.get(r, -np.inf), share))
    top = sorted(log_mass, key=lambda r: (-log_mass[r], r))[:k]
    ranked.append(top)
    scores.append([log_mass[r] for r in top])
  return ranked, scores


# ---------------------------------------------------------------------------
# SEAL n-grams
# ---------------------------------------------------------------------------
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


def seal_examples(tc: corpus.TokenizedCollection, tasks: SealTasks, split: str, input_len: int,
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
    for span in _random_spans(doc, tasks.span_input_len, tasks.num_spans, rng):
      inputs += [span, span]
      targets += [doc[:n], _random_spans(doc, n, 1, rng)[0]]
  return seq2seq.arrays(inputs, targets, input_len, n)


# SEAL's scorer is the core's (the server scores with it too); registered here
# so that gin files bind it as docgen.SealScorer.alpha = ..., and calls to
# SealScorer() here take those bindings.
SealScorer = gin.configurable(seal.SealScorer)


def rescore_seal(qids: list[str], seqs: np.ndarray, logp: np.ndarray, scorer: SealScorer,
                 tc: corpus.TokenizedCollection, fm: fm_index.FMIndex, k: int = 100):
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


# ---------------------------------------------------------------------------
# Search (training's evaluation and the retrievers updated with new documents)
# ---------------------------------------------------------------------------
def dsi_search(pred, params, mesh, inputs: np.ndarray, trie: constraints.PrefixTrie,
               beam_size: int, num_steps: int, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Constrained beam search over identifiers of `num_steps` tokens for
  padded queries `inputs` [q, input_len], `batch_size` queries at a time on
  `mesh`: (tokens int [q, beam, num_steps], beam scores [q, beam])."""
  def run(batch, rows):
    tokens, scores = pred.predict(params, batch['x'], beam_size, num_steps, trie)
    return partitioning.gather(tokens, rows), partitioning.gather(scores, rows)
  outs = partitioning.map_batches({'x': inputs}, batch_size, mesh, run)
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def seal_search(pred, params, mesh, inputs: np.ndarray, allowed: fm_index.NGramConstraint,
                beam_size: int, ngram_len: int, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """SEAL's beam search over n-grams that occur (`allowed`, on the host):
  (sequences int [q, beam, ngram_len], per-token log-probs [q, beam, ngram_len])."""
  def run(batch, rows):
    beams = pred.predict_host_constrained(params, batch['x'], beam_size, ngram_len, allowed)
    return (partitioning.gather(beams.sequences, rows),
            partitioning.gather(beams.token_log_probs, rows))
  outs = partitioning.map_batches({'x': inputs}, batch_size, mesh, run)
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


# ---------------------------------------------------------------------------
# Train and evaluate one method
# ---------------------------------------------------------------------------
SERVING_RUN = 'retrieval_run.json'  # what a run's export needs besides the checkpoint
SPM_MODEL = 'spm.model'
WORDPIECE = 'tokenizer.json'  # instead of spm.model, for pretrained-encoder runs
DOC_IDS = 'doc_ids.txt'
FM_INDEX = 'fm_index'


def save_serving_inputs(workdir: str, tc: corpus.TokenizedCollection, method: str,
                        config: models.TransformerConfig, input_len: int, beam_size: int, *,
                        ids: ItemIds | None = None, shift: int = 0,
                        fm: fm_index.FMIndex | None = None, extra: dict | None = None) -> None:
  """Writes into a run folder what `genrec.retrieval.export` reads: the
  SentencePiece model, the document ids (line i: document i + 1), the run's
  shapes and settings (retrieval_run.json, with `extra`), and DSI's docids
  (ids/) or SEAL's FM-index (fm_index/)."""
  if ids is not None:
    ids.save(os.path.join(workdir, 'ids'))
  if fm is not None:
    fm.save(os.path.join(workdir, FM_INDEX))
  if isinstance(tc.sp, text_encoder.WordPieceVocabulary):
    with open(os.path.join(workdir, WORDPIECE), 'wb') as f:
      f.write(tc.sp.serialized)
  else:
    with open(os.path.join(workdir, SPM_MODEL), 'wb') as f:
      f.write(tc.sp.serialized_model_proto())
  sequences.write_external_ids(os.path.join(workdir, DOC_IDS), tc.collection.doc_ids)
  loop.write_json(os.path.join(workdir, SERVING_RUN), {
      'method': method, 'collection': tc.collection.name, 'input_len': input_len,
      'docid_token_shift': shift, 'beam_size': beam_size,
      'model_config': dataclasses.asdict(config), 'num_docs': tc.collection.num_docs,
      **(extra or {})})


@gin.configurable(denylist=['method', 'tc', 'workdir'])
def train_and_evaluate(
    method: str,
    tc: corpus.TokenizedCollection,
    workdir: str,
    model_config: models.TransformerConfig = models.TransformerConfig(),
    optimizer_fn: Callable = trainer.make_optimizer,
    mesh_fn: Callable = partitioning.make_mesh,
    num_train_steps: int = 3000,
    batch_size: int = 128,
    input_len: int = 64,
    train_split: str = 'train',
    eval_split: str = 'test',
    dsi_beam_size: int = 100,
    seal_beam_size: int = 15,
    eval_batch_size: int = 16,
    log_every_steps: int = 200,
    seed: int = 0,
    dsi_tasks: DsiTasks | None = None,
    seal_tasks: SealTasks | None = None,
    seal_scorer: SealScorer | None = None,
    fm: fm_index.FMIndex | None = None,
    cache_dir: str | None = None,
    queries_file: str | None = None,
    run_splits: Sequence[str] = (),
    query_generation: pseudo_queries.QueryGeneration | None = None,
    pretrained_init: bool = True,
) -> dict:
  """Trains `method` (one of METHODS) on `tc` and evaluates it on `eval_split`.

  The final parameters are checkpointed in workdir/checkpoints: running again
  with the same workdir and settings evaluates them without training.

  With `queries_file` (JSON lines {"_id", "text"}), the trained model also
  retrieves for those queries: <workdir>/<file name>.trec (the infer use).
  Every split of `run_splits` (e.g. held-out 'dev' queries that a hybrid
  tunes on) gets its run file <workdir>/<split>.trec too, besides
  `eval_split`'s.

  `dsi_tasks`, `seal_tasks`, `seal_scorer` and `query_generation` default to
  their classes built at call time, so gin bindings of those classes (e.g.
  `docgen.SealScorer.alpha = 1.5`) apply. With
  `query_generation.num_queries` > 0, every document also gets that many
  generated queries as indexing inputs (`pseudo_queries`; the generator is
  trained once per collection and training split under `cache_dir`, or the
  workdir without one); with `query_generation.queries_file`, the file's
  queries instead (the way a pretrained-encoder run gets pseudo-queries).

  With `model_config.architecture = 'bert_encoder_decoder'`, the collection
  is tokenized again with the encoder checkpoint's WordPiece vocabulary (SEAL's
  n-grams and FM-index are WordPiece tokens), DSI's docid tokens follow the
  reserved tokens, and with `pretrained_init` training starts from the
  checkpoint's encoder and from output embeddings that make the first step
  meaningful: DSI atomic's docids as the documents' sentence embeddings,
  residual semantic docids as their codebooks, SEAL's tokens as the
  checkpoint's word embeddings; without it, from random weights of the same
  shapes (the comparison).

  Returns a row for the retrieval table (metrics, budget, timings).
  """
  config_check.check_arguments(train_and_evaluate, dict(locals()))
  dsi_tasks = dsi_tasks or DsiTasks()
  seal_tasks = seal_tasks or SealTasks()
  seal_scorer = seal_scorer or SealScorer()
  query_generation = query_generation or pseudo_queries.QueryGeneration()
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; use one of {METHODS}.')
  c = tc.collection
  for split in (train_split, eval_split, *run_splits):
    if split not in c.qrels:
      raise ValueError(f'{c.name} has no qrels split {split!r} (has {sorted(c.qrels)}).')
  pretrained = model_config.architecture == 'bert_encoder_decoder'
  checkpoint = model_config.encoder_checkpoint or None
  if pretrained:
    if dsi_tasks.title_len and method != 'seal':
      raise ValueError('DsiTasks.title_len (title identifiers) decodes title pieces: use the '
                       "default architecture 'encoder_decoder' (the pretrained encoder's "
                       'decoder holds docid tokens only).')
    if query_generation.num_queries and not query_generation.queries_file:
      raise ValueError(
          'The query generator is an encoder-decoder over the SentencePiece collection, not '
          'the pretrained encoder: generate the pseudo-queries with a run of the default '
          "architecture 'encoder_decoder' (it writes <cache>/query_generator-*/queries.jsonl) "
          'and give that file to this run as pseudo_queries.QueryGeneration.queries_file.')
    if not isinstance(tc.sp, text_encoder.WordPieceVocabulary):
      tc = corpus.TokenizedCollection.build(c, text_encoder.WordPieceVocabulary(checkpoint))
      fm = None  # the caller's FM-index is over the other tokens: SEAL builds its own
  loop.make_workdir(workdir)
  v = tc.text_vocab_size
  pseudo, t_gen = None, time.time()
  if query_generation.queries_file:
    pseudo = pseudo_queries.read(tc, query_generation)
  elif query_generation.num_queries:
    pseudo = pseudo_queries.generate(tc, query_generation, cache_dir or workdir, model_config,
                                     optimizer_fn, mesh_fn, input_len, train_split, seed,
                                     log_every_steps)
  pseudo_before = sum(map(len, pseudo)) if pseudo else 0
  if pseudo and query_generation.filter_top_k:
    pseudo = pseudo_queries.round_trip_filter(tc, pseudo, query_generation.filter_top_k)
    if not any(pseudo):
      raise ValueError(f'QueryGeneration.filter_top_k = {query_generation.filter_top_k} keeps '
                       f'none of the {pseudo_before} pseudo-queries: raise it, or set 0.')
  generation_s = time.time() - t_gen
  t_prep = time.time()
  if method == 'seal':
    if fm is None:
      fm = fm_index.FMIndex.build(tc.doc_tokens, v)
    elif fm.vocab_size != v or fm.num_tokens != sum(map(len, tc.doc_tokens)):
      raise ValueError(f'The FM-index given ({fm.num_tokens} tokens, vocab {fm.vocab_size}) '
                       f'is not over {c.name} in these tokens ({tc.tokens}): build it from '
                       'tc.doc_tokens, or pass fm=None.')
    arrays = seal_examples(tc, seal_tasks, train_split, input_len, seed, pseudo)
    used, ids, shift, trie = v, None, 0, None
  else:
    ids = docids(method, tc, dsi_tasks, cache_dir, checkpoint if pretrained else None)
    # Docid tokens follow the text pieces in one vocabulary; a pretrained
    # encoder has its own, and the decoder's holds the docid tokens only.
    shift = 0 if pretrained else v - NUM_RESERVED_TOKENS
    arrays = dsi_examples(tc, ids, shift, dsi_tasks, train_split, input_len, seed, pseudo)
    used = (NUM_RESERVED_TOKENS if pretrained else v) + sum(ids.level_sizes)
    trie = constraints.PrefixTrie.from_codes(ids.codes[1:], ids.level_sizes,
                                             ids.level_offsets + shift)
  title_len = dsi_tasks.title_len if method != 'seal' else 0
  title_trie, title_rows = None, {}
  if title_len:  # the second identifier: title prefixes, in text tokens (< v)
    titles, has_title = title_codes(tc, title_len)
    if not has_title.any():
      raise ValueError(f'DsiTasks.title_len = {title_len}, but no document of {c.name} has '
                       'a title that its text starts with: set title_len = 0.')
    title_trie = constraints.PrefixTrie.from_codes(titles[has_title], (v,) * title_len,
                                                   (0,) * title_len)
    for i in np.flatnonzero(has_title):
      title_rows.setdefault(tuple(titles[i].tolist()), []).append(int(i))
  prep_s = time.time() - t_prep
  config = dataclasses.replace(model_config, vocab_size=-(-used // 128) * 128)
  if jax.process_index() == 0:
    if method == 'seal':
      save_serving_inputs(workdir, tc, method, config, input_len, seal_beam_size, fm=fm,
                          extra={'ngram_len': seal_tasks.ngram_len,
                                 'scorer': dataclasses.asdict(seal_scorer)})
    else:
      save_serving_inputs(workdir, tc, method, config, input_len, dsi_beam_size, ids=ids,
                          shift=shift, extra={'title_len': title_len} if title_len else None)
  n = len(arrays['encoder_input_tokens'])
  # Residual semantic docids of a pretrained run start from their codebooks.
  codebook_init = method == 'dsi_semantic' and dsi_tasks.semantic_scheme == 'residual'
  init = 'random'
  if pretrained and pretrained_init:
    init = os.path.basename(os.path.normpath(checkpoint)) if checkpoint else 'MiniLM'
    if method == 'dsi_atomic':
      init += ' (+ docid embeddings)'
    elif codebook_init:
      init += ' (+ docid codebooks)'
    elif method == 'seal':
      init += ' (+ word embeddings)'
  settings = {'method': method, 'collection': c.name, 'input_len': input_len,
              'train_split': train_split, 'examples': n,
              **({'init': init} if pretrained else {}),
              'tasks': settings_repr(seal_tasks if method == 'seal' else dsi_tasks),
              **({'pseudo_queries': query_generation.settings_repr()} if pseudo else {}),
              **({'queries_file_digest': pseudo_queries.file_digest(query_generation.queries_file)}
                 if query_generation.queries_file else {})}

  def warm_start(params: dict) -> dict:
    params['bert'] = text_encoder.pretrained_params(checkpoint)
    if method == 'seal':  # n-grams of WordPiece tokens: the checkpoint's own table
      words = params['bert']['word']['embedding']
      params['embed'][:len(words)] = words
    elif method == 'dsi_atomic':
      params['embed'][ids.token_table()[1:, 0] + shift] = document_embeddings(
          c, cache_dir, checkpoint)
    elif codebook_init:
      # The collision level's tokens start at 0: its documents tie until trained.
      table = ids.token_table()[1:] + shift
      books = residual_codebooks(ids, document_embeddings(c, cache_dir, checkpoint),
                                 dsi_tasks.semantic_levels)
      for level, book in enumerate(books):
        params['embed'][table[:, level]] = book[ids.codes[1:, level]]
    return params
  tr, mesh, state, train_s, loss = seq2seq.train(
      workdir, method, arrays, config, optimizer_fn, mesh_fn, num_train_steps, batch_size,
      seed, log_every_steps, settings, warm_start if pretrained and pretrained_init else None)

  def retrieve(qids: list[str], query_tokens: dict[str, np.ndarray], tag: str | None):
    """Ranked documents of `qids` (best first), their scores, and extras;
    writes <workdir>/<tag>.trec (and, for SEAL, the decoded n-grams) unless
    `tag` is None."""
    inputs = seq2seq.pad([query_tokens[q] for q in qids], input_len)
    ranked = {}
    if method == 'seal':
      allowed = fm_index.NGramConstraint(fm, config.vocab_size)
      seqs, logp = seal_search(tr, state.params, mesh, inputs, allowed, seal_beam_size,
                               seal_tasks.ngram_len, eval_batch_size)
      # The decoded n-grams and their token log-probs, so that the scorer can be
      # studied again without the model (`rescore_seal`).
      if tag:
        np.savez(os.path.join(workdir, f'{tag}_ngrams.npz'), qids=np.array(qids),
                 seqs=seqs, logp=logp)
      ranked, scores, extra = rescore_seal(qids, seqs, logp, seal_scorer, tc, fm)
      extra['constraint_ms_per_query'] = round(allowed.seconds / len(qids) * 1e3, 1)
    else:
      def search(num_steps, constraint):
        return dsi_search(tr, state.params, mesh, inputs, constraint, dsi_beam_size, num_steps,
                          eval_batch_size)
      tokens, beam_scores = search(ids.num_levels, trie)
      items = ids.tokens_to_items(tokens - shift)  # 0: not a docid (never, with the trie)
      extra = {'docid_levels': ids.num_levels, 'docid_collisions_before_dedup':
               ids.info.get('collisions_before_dedup', 0)}
      if title_len:
        title_tokens, title_scores = search(title_len, title_trie)
        views = [([[[i - 1] if i > 0 else [] for i in row] for row in items], beam_scores),
                 ([[title_rows.get(tuple(t.tolist()), []) for t in beams]
                   for beams in title_tokens], title_scores)]
        rows_ranked, rows_scores = fuse_identifier_views(views)
        scores = {}
        for q, rs, sc in zip(qids, rows_ranked, rows_scores):
          ranked[q], scores[q] = [c.doc_ids[r] for r in rs], sc
      else:
        scores = {}
        for q, row, sc in zip(qids, items, beam_scores):
          ranked[q] = [c.doc_ids[i - 1] for i in row if i > 0]
          scores[q] = [float(v) for i, v in zip(row, sc) if i > 0]
    if tag:
      corpus.write_trec_run(os.path.join(workdir, f'{tag}.trec'), ranked, scores, method)
    return ranked, scores, extra

  qrels = c.qrels[eval_split]
  qids = sorted(qrels, key=lambda q: (len(q), q))
  # The first batch compiles the search (and warms the host caches): timed
  # apart, so that ms_per_query is the warm latency.
  t0 = time.time()
  retrieve(qids[:eval_batch_size], tc.query_tokens, None)
  first_batch_s = time.time() - t0
  t0 = time.time()
  ranked, scores, extra = retrieve(qids, tc.query_tokens, eval_split)
  eval_s = time.time() - t0
  m = corpus.retrieval_metrics(ranked, qrels, grades=c.grades.get(eval_split))
  device = partitioning.device_summary()
  identifiers = identifiers_label(method, dsi_tasks, seal_tasks.ngram_len)
  row = {'method': method, 'tokens': tc.tokens, 'init': init, 'identifiers': identifiers,
         **{k: round(val, 4) for k, val in m.items()}, 'queries': len(qrels),
         'train_queries': len(c.qrels[train_split]),
         # Per document: the beams generated, or the average of a file's queries or
         # of the distinct samples, or of those the round-trip filter kept.
         'pseudo_queries': (round(sum(map(len, pseudo)) / len(pseudo), 1)
                            if query_generation.queries_file or
                            query_generation.decoding == 'sample' or query_generation.filter_top_k
                            else query_generation.num_queries),
         **({'query_decoding': f'sample (top-{query_generation.top_k}, '
                               f't {query_generation.temperature:g})'}
            if pseudo and query_generation.decoding == 'sample'
            and not query_generation.queries_file else {}),
         **({'query_source': os.path.basename(query_generation.queries_file)}
            if pseudo and query_generation.queries_file else {}),
         **({'query_filter': f'BM25 top-{query_generation.filter_top_k} round trip, kept '
                             f'{sum(map(len, pseudo))} of {pseudo_before}'}
            if pseudo and query_generation.filter_top_k else {}),
         **({'query_generation_s': round(generation_s, 1),
             **pseudo_queries.diversity(tc, pseudo, train_split)} if pseudo else {}),
         'training': f'{num_train_steps} x {batch_size} ({n} examples), {device}',
         'train_s': None if train_s is None else round(train_s, 1),
         'prep_s': round(prep_s, 1), 'ms_per_query': round(eval_s / len(qids) * 1e3, 1),
         'first_batch_s': round(first_batch_s, 2),
         'final_loss': None if loss is None else round(loss, 4),
         'params_m': round(trainer.param_count(state.params) / 1e6, 2), **extra}
  for split in run_splits:
    retrieve(sorted(c.qrels[split], key=lambda q: (len(q), q)), tc.query_tokens, split)
  if queries_file:
    queries = corpus.read_queries(queries_file)
    tag = os.path.splitext(os.path.basename(queries_file))[0]
    retrieve(list(queries), {q: np.asarray(tc.sp.encode(t), np.int32)
                             for q, t in queries.items()}, tag)
    row['infer_run'] = os.path.join(workdir, f'{tag}.trec')
  logging.info('%s: %s', method, row)
  return row
