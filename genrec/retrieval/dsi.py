"""DSI: a document's docid, generated from the query (Tay et al. 2022).

The encoder-decoder reads a query's tokens and generates a docid, decoded by
beam search constrained to existing docids (`constraints.PrefixTrie`). The
docids are an identifier scheme (`genrec.ids`), as recommendation's item ids
are; the method names of the run mode take these:

* dsi_atomic, `ids.AtomicIds`: one token per document;
* dsi_naive, `ids.NaiveDigitIds`: the digits of the document's number,
  zero-padded (a fixed-length version of DSI's naive string docid);
* dsi_semantic, by default `ids.HierarchicalKMeansIds` (branching 10 as in
  DSI, plus a collision level) or e.g. `ids.ResidualKMeansIds`: k-means over
  MiniLM embeddings of the documents' text (`document_embeddings`).

Docid tokens follow the text pieces in one vocabulary. Training mixes the
indexing task (document prefix, title and random spans -> docid) with the
retrieval task (train queries -> docids of their relevant documents).
"""

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence

import gin
import numpy as np

from genrec import constraints, models, partitioning, text_encoder
from genrec.ids import (EOS_ID, NUM_RESERVED_TOKENS, AtomicIds, HierarchicalKMeansIds, IdScheme,
                        ItemIds, NaiveDigitIds, ResidualKMeansIds)
from genrec.ids import extend as extend_ids
from genrec.retrieval import corpus, method, run_folder, seq2seq


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DsiTasks:
  """DSI's training mixture.

  Attributes:
    num_spans: random spans of each document used as indexing inputs (besides
      its first `input_len` tokens and its title).
    retrieval_repeats: copies of each (train query, relevant doc) pair, to
      balance the retrieval task against the indexing task.
    title_len: with > 0, a second identifier per document: the first
      `title_len` tokens of its title, EOS-padded (a document without a title
      has its docid only). Every example that targets a docid has a twin that
      targets the title prefix; a second constrained beam search decodes title
      prefixes (a trie of the documents' prefixes, exact on the device, in the
      text tokens, disjoint from the docid tokens) and a document's score is
      the log of its probability summed over both identifiers (a prefix shared
      by k documents gives each 1/k of its beam's), as the model was trained
      to put mass on either (`fuse_identifier_views`). The default model
      (`models.EncoderDecoderModel`) only.
  """
  num_spans: int = 5
  retrieval_repeats: int = 4
  title_len: int = 0


@dataclasses.dataclass(frozen=True)
class DocumentItems:
  """A collection as the identifier schemes read data: items 1..num_items are
  its documents, `item_keys` their ids (index 0 '')."""
  name: str
  num_items: int
  item_keys: tuple[str, ...]


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


def fit_docids(scheme: IdScheme, c: corpus.Collection, cache_dir: str | None = None,
               model_dir: str | None = None) -> ItemIds:
  """The docids of `c` by `scheme`; item id i + 1 is document i. A content
  scheme (one with a `content_fn`) clusters the documents' embeddings by the
  sentence encoder in `model_dir` (default MiniLM) instead of its own content."""
  if hasattr(scheme, 'content_fn'):
    emb = document_embeddings(c, cache_dir, model_dir)
    padded = np.vstack([emb[:1] * 0, emb])  # row 0: padding
    # A lambda, as before the docids were a scheme object: its name is part of
    # the scheme name saved with the ids ('hkmeans-3x10-s0-<lambda>').
    scheme = dataclasses.replace(scheme, content_fn=lambda _: padded)
  return scheme.fit(DocumentItems(c.name, c.num_docs, ('', *c.doc_ids)))


# The plain identifiers of each docid scheme, as its rows name them (a
# semantic scheme adds its settings, `docids_label`).
PLAIN_IDENTIFIERS = {AtomicIds: 'atomic docid', NaiveDigitIds: 'naive docid (digits)'}
SEMANTIC_IDENTIFIERS = 'semantic docid'
# The k-means docids that DsiTasks chose by name ('semantic_scheme') before
# the docids were a scheme object, and the field of their branching.
KMEANS_KINDS = {HierarchicalKMeansIds: ('hierarchical', 'branching'),
                ResidualKMeansIds: ('residual', 'codebook_size')}


def kmeans_docids(kind: str, levels: int, branching: int) -> IdScheme:
  """The k-means docids that DsiTasks(semantic_scheme=kind, semantic_levels=
  levels, semantic_branching=branching) named (to read recorded commands)."""
  for cls, (name, field) in KMEANS_KINDS.items():
    if name == kind:
      return cls(num_levels=levels, **{field: branching})
  raise ValueError(f'Unknown k-means docids {kind!r}; recorded runs name one of '
                   f'{[name for name, _ in KMEANS_KINDS.values()]}.')


def _kmeans_settings(scheme: IdScheme) -> tuple[str, int, int] | None:
  """(kind, levels, branching) of k-means docids, else None."""
  kind = KMEANS_KINDS.get(type(scheme))
  return kind and (kind[0], scheme.num_levels, getattr(scheme, kind[1]))


def docids_label(scheme: IdScheme) -> str:
  """What docids of `scheme` are, for a row: 'atomic docid', 'naive docid
  (digits)', 'semantic docid, residual k-means 2 x 128'."""
  if type(scheme) in PLAIN_IDENTIFIERS:
    return PLAIN_IDENTIFIERS[type(scheme)]
  kmeans = _kmeans_settings(scheme)
  return SEMANTIC_IDENTIFIERS + (f', {kmeans[0]} k-means {kmeans[1]} x {kmeans[2]}' if kmeans
                                 else f', {scheme.name}')


def examples(tc: corpus.TokenizedCollection, ids: ItemIds, shift: int, tasks: DsiTasks,
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
    pieces = [toks[:input_len]] + method.random_spans(toks, input_len, tasks.num_spans, rng)
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


def title_codes(tc: corpus.TokenizedCollection, title_len: int
                ) -> tuple[np.ndarray, np.ndarray]:
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


def search(pred, params, mesh, inputs: np.ndarray, trie: constraints.PrefixTrie,
           beam_size: int, num_steps: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Constrained beam search over identifiers of `num_steps` tokens for
  padded queries `inputs` [q, input_len], `batch_size` queries at a time on
  `mesh`: (tokens int [q, beam, num_steps], beam scores [q, beam])."""
  def run(batch, rows):
    tokens, scores = pred.predict(params, batch['x'], beam_size, num_steps, trie)
    return partitioning.gather(tokens, rows), partitioning.gather(scores, rows)
  outs = partitioning.map_batches({'x': inputs}, batch_size, mesh, run)
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


# ---------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------
# The semantic fields of DsiTasks before the docids were a scheme object, at
# their defaults: the run settings of every DSI run recorded them (atomic and
# naive ones too), so these keep run folders of before resumable.
_RECORDED_KMEANS_DEFAULTS = ('hierarchical', 3, 10)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Dsi(method.GenerativeMethod):
  """DSI with one docid scheme (module docstring).

  Attributes:
    name: the method's name in tables and run folders ('dsi_atomic', ...).
    docids: the identifier scheme; a content scheme clusters the documents'
      embeddings (`fit_docids`).
    tasks: the training mixture (default: `DsiTasks()` with its gin bindings).
    beam_size: beams of the constrained search (documents per query).
  """
  name: str = 'dsi_atomic'
  docids: IdScheme = AtomicIds()
  tasks: DsiTasks = dataclasses.field(default_factory=DsiTasks)
  beam_size: int = 100

  def check(self, pretrained: bool) -> None:
    if pretrained and self.tasks.title_len:
      raise ValueError('DsiTasks.title_len (title identifiers) decodes title pieces: use the '
                       "default model, models.EncoderDecoderModel (the pretrained encoder's "
                       'decoder holds docid tokens only).')

  def index(self, tc: corpus.TokenizedCollection, *, pretrained: bool,
            model_dir: str | None, cache_dir: str | None, fm=None) -> 'DsiIndex':
    del fm  # DSI's identifiers are not n-grams
    ids = fit_docids(self.docids, tc.collection, cache_dir, model_dir)
    # Docid tokens follow the text pieces in one vocabulary; a pretrained
    # encoder has its own, and the decoder's holds the docid tokens only.
    shift = 0 if pretrained else tc.text_vocab_size - NUM_RESERVED_TOKENS
    return DsiIndex(self, tc, ids, shift, model_dir, cache_dir)

  def tasks_repr(self) -> str:
    """DsiTasks' repr as run settings recorded it when it also held the
    semantic docids' kind, levels and branching (`_RECORDED_KMEANS_DEFAULTS`
    for docids that are not k-means); title_len only when set."""
    kmeans = _kmeans_settings(self.docids)
    if type(self.docids) in PLAIN_IDENTIFIERS:
      kmeans = _RECORDED_KMEANS_DEFAULTS
    fields = [('num_spans', self.tasks.num_spans),
              ('retrieval_repeats', self.tasks.retrieval_repeats)]
    if kmeans:
      fields += [('semantic_branching', kmeans[2]), ('semantic_levels', kmeans[1]),
                 ('semantic_scheme', kmeans[0])]
    else:  # docids that DsiTasks could not name
      fields.append(('docids', self.docids.name))
    fields += [('title_len', self.tasks.title_len)] if self.tasks.title_len else []
    return 'DsiTasks(' + ', '.join(f'{k}={v!r}' for k, v in fields) + ')'

  @property
  def plain_identifiers(self) -> str:
    return PLAIN_IDENTIFIERS.get(type(self.docids), SEMANTIC_IDENTIFIERS)

  @property
  def base_identifiers(self) -> str:
    return docids_label(self.docids)

  @property
  def identifiers(self) -> str:
    title_len = self.tasks.title_len
    return self.base_identifiers + (f' + title prefix ({title_len} tokens)'
                                    if title_len else '')

  def for_run(self, run: dict) -> 'Dsi':
    return dataclasses.replace(self, beam_size=run['beam_size'])

  def grow(self, retriever: str, run: dict, old: corpus.Collection, new: corpus.Collection,
           both: corpus.Collection, sp, params: dict, config: models.ModelConfig, *, cache_dir: str | None,
           atomic_rows: str) -> method.Grown:
    """Every old document keeps its docid; new ones get docids from the
    existing scheme (`genrec.ids.extend`), and their tokens rows
    (`new_docid_rows`)."""
    ids0 = ItemIds.load(os.path.join(retriever, 'ids'))
    kind, shift = ids0.scheme.split('-')[0], run.get('docid_token_shift', 0)
    checkpoint, timings = getattr(config, 'encoder_checkpoint', '') or None, {}
    needs_content = kind not in ('naive',) and (kind != 'atomic' or atomic_rows != 'mean')
    emb_old = emb_new = None
    if needs_content:
      t_enc = time.time()
      emb_old = document_embeddings(old, cache_dir, checkpoint)
      emb_new = document_embeddings(new, None, checkpoint)
      timings['encode_s'] = time.time() - t_enc
    t0 = time.time()
    ids = extend_ids.extend(ids0, new.num_docs, None if kind == 'atomic' else emb_new, emb_old)
    used = shift + NUM_RESERVED_TOKENS + sum(ids.level_sizes)
    new_config = dataclasses.replace(config, vocab_size=-(-used // 128) * 128)
    docid_tokens = slice(shift + NUM_RESERVED_TOKENS,
                         shift + NUM_RESERVED_TOKENS + sum(ids0.level_sizes))
    params = models.grow_params(params, new_config, {'vocab': models.grow_mean(docid_tokens)})
    if kind == 'atomic' and atomic_rows != 'mean':
      new_docid_rows(params['embed'], ids0, ids, shift, emb_old, emb_new, atomic_rows)
    timings['update_s'] = time.time() - t0
    tc = corpus.TokenizedCollection(both, sp, [], np.zeros(0), {})  # names, not tokens
    return method.Grown(DsiIndex(self, tc, ids, shift, checkpoint, cache_dir), params,
                        new_config, timings,
                        {'atomic_rows': atomic_rows if kind == 'atomic' else None,
                         'id_scheme': ids.scheme})


@dataclasses.dataclass
class DsiIndex(method.Index):
  """DSI fitted to a collection: its docids (`ids`; docid token = ids token +
  `shift`) and their trie, and with title identifiers their trie and
  documents."""
  method: Dsi
  tc: corpus.TokenizedCollection
  ids: ItemIds
  shift: int
  model_dir: str | None = None
  cache_dir: str | None = None

  def __post_init__(self):
    self.trie = constraints.PrefixTrie.from_codes(self.ids.codes[1:], self.ids.level_sizes,
                                                  self.ids.level_offsets + self.shift)
    self.title_trie, self.title_rows = None, {}
    title_len, c = self.method.tasks.title_len, self.tc.collection
    if title_len:  # the second identifier: title prefixes, in text tokens (< vocab)
      titles, has_title = title_codes(self.tc, title_len)
      if not has_title.any():
        raise ValueError(f'DsiTasks.title_len = {title_len}, but no document of {c.name} has '
                         'a title that its text starts with: set title_len = 0.')
      v = self.tc.text_vocab_size
      self.title_trie = constraints.PrefixTrie.from_codes(titles[has_title], (v,) * title_len,
                                                          (0,) * title_len)
      for i in np.flatnonzero(has_title):
        self.title_rows.setdefault(tuple(titles[i].tolist()), []).append(int(i))

  @property
  def vocab_used(self) -> int:
    return self.shift + NUM_RESERVED_TOKENS + sum(self.ids.level_sizes)

  def examples(self, split: str, input_len: int, seed: int,
               pseudo: list[list[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    return examples(self.tc, self.ids, self.shift, self.method.tasks, split, input_len, seed,
                    pseudo)

  def init_label(self) -> str:
    label, _ = _WARM_STARTS.get(type(self.method.docids), ('', None))
    return label

  def warm_start(self, params: dict) -> dict:
    _, set_rows = _WARM_STARTS.get(type(self.method.docids), ('', None))
    if set_rows:
      set_rows(params['embed'], self,
               document_embeddings(self.tc.collection, self.cache_dir, self.model_dir))
    return params

  def save_serving_inputs(self, workdir: str, config: models.ModelConfig,
                          input_len: int, extra: dict | None = None) -> None:
    title_len = self.method.tasks.title_len
    run_folder.save_serving_inputs(
        workdir, self.tc, self.method.name, config, input_len, self.method.beam_size,
        ids=self.ids, shift=self.shift,
        extra={**({'title_len': title_len} if title_len else {}), **(extra or {})} or None)

  def retrieve(self, model: method.Model, qids: list[str], inputs: np.ndarray,
               workdir: str | None = None, tag: str | None = None) -> method.Retrieved:
    del workdir, tag  # nothing but the run file, which the caller writes
    ids, doc_ids = self.ids, self.tc.collection.doc_ids

    def decode(num_steps, trie):
      return search(model.pred, model.params, model.mesh, inputs, trie, self.method.beam_size,
                    num_steps, model.batch_size)
    tokens, beam_scores = decode(ids.num_levels, self.trie)
    items = ids.tokens_to_items(tokens - self.shift)  # 0: not a docid (never, with the trie)
    extra = {'docid_levels': ids.num_levels, 'docid_collisions_before_dedup':
             ids.info.get('collisions_before_dedup', 0)}
    ranked, scores = {}, {}
    if self.title_trie is not None:
      title_tokens, title_scores = decode(self.method.tasks.title_len, self.title_trie)
      views = [([[[i - 1] if i > 0 else [] for i in row] for row in items], beam_scores),
               ([[self.title_rows.get(tuple(t.tolist()), []) for t in beams]
                 for beams in title_tokens], title_scores)]
      for q, rs, sc in zip(qids, *fuse_identifier_views(views)):
        ranked[q], scores[q] = [doc_ids[r] for r in rs], sc
    else:
      for q, row, sc in zip(qids, items, beam_scores):
        ranked[q] = [doc_ids[i - 1] for i in row if i > 0]
        scores[q] = [float(v) for i, v in zip(row, sc) if i > 0]
    return ranked, scores, extra


# ---------------------------------------------------------------------------
# Docid token rows from pretrained content
# ---------------------------------------------------------------------------
def _embedding_rows(embed: np.ndarray, index: DsiIndex, emb: np.ndarray) -> None:
  """Atomic docids: each document's row is its sentence embedding, so that
  the untrained model scores documents as the encoder's dense retrieval."""
  embed[index.ids.token_table()[1:, 0] + index.shift] = emb


def _codebook_rows(embed: np.ndarray, index: DsiIndex, emb: np.ndarray) -> None:
  """Residual k-means docids: the token of code j at level l is the level's
  centroid j, so the untrained model scores each level by the query's
  similarity to that part of the document's embedding. The collision level's
  tokens stay at 0: its documents tie until trained."""
  ids = index.ids
  table = ids.token_table()[1:] + index.shift
  books = extend_ids.residual_codebooks(ids, emb, index.method.docids.num_levels)
  for level, book in enumerate(books):
    embed[table[:, level]] = book[ids.codes[1:, level]]


# Docid schemes whose token rows start from the documents' embeddings: the
# row's 'init' label and how.
_WARM_STARTS = {AtomicIds: (' (+ docid embeddings)', _embedding_rows),
                ResidualKMeansIds: (' (+ docid codebooks)', _codebook_rows)}


def ridge_map(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray:
  """The affine map [d_x + 1, d_y] that takes rows of `x` to rows of `y` with
  least squares plus `l2` (relative to x's mean squared norm) on the weights."""
  xb = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  reg = l2 * float((x.astype(np.float64) ** 2).sum(1).mean()) * np.eye(xb.shape[1])
  reg[-1, -1] = 0.0
  return np.linalg.solve(xb.T @ xb + reg, xb.T @ y.astype(np.float64))


def new_docid_rows(table: np.ndarray, ids0: ItemIds, ids: ItemIds, shift: int,
                   emb_old: np.ndarray, emb_new: np.ndarray, atomic_rows: str) -> None:
  """Sets the token rows of the atomic docids that `ids` adds to `ids0`:
  'embedding', the new documents' embeddings (the row a MiniLM-initialized
  model starts a docid from); 'mapped', those mapped by the ridge regression
  that takes the old documents' embeddings to their trained rows."""
  rows_old = ids0.token_table()[1:, 0] + shift
  rows_new = ids.token_table()[ids0.num_items + 1:, 0] + shift
  if atomic_rows == 'embedding':
    if emb_new.shape[1] != table.shape[1]:
      raise ValueError(f"atomic_rows = 'embedding' needs docid rows of the embeddings' "
                       f'width {emb_new.shape[1]}; this model\'s are {table.shape[1]}: '
                       "use 'mapped'.")
    table[rows_new] = emb_new
  else:
    w = ridge_map(emb_old, table[rows_old])
    table[rows_new] = (np.concatenate([emb_new, np.ones((len(emb_new), 1))], 1) @ w
                       ).astype(table.dtype)
