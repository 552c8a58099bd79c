"""Documents added to a trained retriever without retraining it.

  python main.py --gin_file=gin/runs/add_documents.gin \
      --gin_bindings="RETRIEVER='runs/retrieval/dsi_atomic'" \
      --gin_bindings="DOCUMENTS='new_docs.jsonl'" --workdir=runs/retrieval/dsi_atomic_added

`add` reads one trained method's folder of the retrieval run mode
(`RETRIEVER`), the collection it was trained on (`COLLECTION`, `DATA_DIR`)
and new documents (`DOCUMENTS`, corpus.jsonl lines {"_id", "title",
"text"}), and writes into --workdir a run folder of the same layout (the
export and inference run modes read it as they read the original):

* DSI: every old document keeps its docid; new documents get docids from
  the existing identifier scheme (`genrec.ids.extend`: the next atomic
  tokens; the next numbers; semantic codes from the existing k-means
  centroids of the MiniLM document embeddings, and a collision number). The
  token table grows by the new tokens. A new atomic docid's row is its
  document's MiniLM embedding mapped by the linear map (ridge regression)
  that takes the old documents' embeddings to their trained rows
  (`atomic_rows = 'mapped'`; 'embedding': the embedding itself, the row the
  MiniLM-initialized model starts a docid from; 'mean': the mean trained
  row). The docid trie is rebuilt from the new identifiers.
* SEAL: the FM-index is rebuilt over the old and new documents; the model is
  unchanged (its identifiers are the documents' own n-grams).
* With `replay_steps` > 0 (DSI), a short continued training (DSI++): the new
  documents' indexing examples (their start and random spans -> docid)
  mixed with as many examples of the old training mixture, replayed so that
  the old documents are not forgotten.

With `EVAL_COLLECTION` (a collection holding the old and new documents, e.g.
the full collection that the old one was cut from), the updated retriever is
evaluated on its `EVAL_SPLIT` queries (<workdir>/<split>.trec, row.json), and
with `EXPORT` its serving directory is written (<workdir>/serving,
`genrec.retrieval.export`), so that a server answers with the new documents.
"""

import dataclasses
import os
import time
from collections.abc import Callable

from absl import logging
import gin
import jax
import numpy as np
import sentencepiece as spm

from genrec import (config_check, constraints, fm_index, loop, models, partitioning, tables,
                    text_encoder, trainer)
from genrec.data import sequences
from genrec.ids import NUM_RESERVED_TOKENS, ItemIds
from genrec.ids import extend as extend_ids
from genrec.retrieval import corpus, docgen, seq2seq
from genrec.retrieval import export as retrieval_export

ATOMIC_ROWS = ('mapped', 'embedding', 'mean')


def read_documents(path: str, known: set[str]) -> corpus.Collection:
  """The new documents of a corpus.jsonl file, as a collection without
  queries; an id that the retriever already has is refused by name."""
  rows = corpus._read_jsonl(path, ('_id', 'text'))  # noqa: SLF001 (the collection reader)
  if not rows:
    raise corpus.CollectionError(f'{path}: no documents; the file is empty.')
  ids = [str(r['_id']) for r in rows]
  clash = [d for d in ids if d in known]
  dup = sorted({d for d in ids if ids.count(d) > 1}) if len(set(ids)) != len(ids) else []
  if clash or dup:
    raise corpus.CollectionError(
        f'{path}: ' + (f'{len(clash)} document id(s) the retriever already has (e.g. '
                       f'{clash[:3]}); ' if clash else '') +
        (f'duplicate id(s) {dup[:3]}; ' if dup else '') +
        'give each new document an id of its own (updating a document in place is not '
        'supported: remove it from the old run\'s collection and retrain).')
  return corpus.Collection(os.path.splitext(os.path.basename(path))[0], ids,
                           [str(r.get('title') or '') for r in rows], [r['text'] for r in rows],
                           {}, {})


def combined(old: corpus.Collection, new: corpus.Collection) -> corpus.Collection:
  """The old collection (queries and qrels kept) with the new documents after
  its own: document i of the result is item i + 1 of the extended ids."""
  return dataclasses.replace(old, doc_ids=old.doc_ids + new.doc_ids,
                             titles=old.titles + new.titles, texts=old.texts + new.texts)


def ridge_map(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray:
  """The affine map [d_x + 1, d_y] that takes rows of `x` to rows of `y` with
  least squares plus `l2` (relative to x's mean squared norm) on the weights."""
  xb = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  reg = l2 * float((x.astype(np.float64) ** 2).sum(1).mean()) * np.eye(xb.shape[1])
  reg[-1, -1] = 0.0
  return np.linalg.solve(xb.T @ xb + reg, xb.T @ y.astype(np.float64))


def grow_vocab(params: dict, old_vocab: int, new_vocab: int, fill: slice) -> dict:
  """`params` (a pure dict of host arrays) with every axis of size `old_vocab`
  (the token table, a logits projection) grown to `new_vocab`; new entries
  are the mean of the entries in `fill` (the docid tokens) along that axis."""
  def grow(x):
    x = np.asarray(x)
    for axis, size in enumerate(x.shape):
      if size == old_vocab and new_vocab > old_vocab:
        mean = np.take(x, np.arange(old_vocab)[fill], axis).mean(axis, keepdims=True)
        reps = [1] * x.ndim
        reps[axis] = new_vocab - old_vocab
        x = np.concatenate([x, np.tile(mean, reps).astype(x.dtype)], axis)
    return x
  return jax.tree.map(grow, params)


def _tokenizer(retriever: str, run: dict):
  if os.path.exists(os.path.join(retriever, docgen.SPM_MODEL)):
    return spm.SentencePieceProcessor(model_file=os.path.join(retriever, docgen.SPM_MODEL))
  return text_encoder.WordPieceVocabulary(run['model_config'].get('encoder_checkpoint') or None)


def _replay_arrays(tc: corpus.Collection, ids: ItemIds, shift: int, tasks: docgen.DsiTasks,
                   num_old: int, input_len: int, seed: int, replay_ratio: float):
  """The new documents' indexing examples and `replay_ratio` times as many of
  the old training mixture (indexing and train queries), shuffled."""
  arrays = docgen.dsi_examples(tc, ids, shift, dataclasses.replace(tasks, title_len=0), 'train',
                               input_len, seed)
  items = ids.tokens_to_items(arrays['decoder_target_tokens'][:, :ids.num_levels] - shift)
  new, old = np.flatnonzero(items > num_old), np.flatnonzero((items > 0) & (items <= num_old))
  rng = np.random.default_rng(seed)
  take = rng.choice(old, min(len(old), int(round(replay_ratio * len(new)))), replace=False)
  rows = rng.permutation(np.concatenate([new, take]))
  return {k: v[rows] for k, v in arrays.items()}, len(new), len(take)


@gin.configurable(denylist=['workdir'])
def add(workdir: str, retriever: str = gin.REQUIRED, documents: str = gin.REQUIRED,
        collection: str = gin.REQUIRED, data_dir: str | None = None,
        eval_collection: str | None = None, eval_split: str = 'test',
        atomic_rows: str = 'mapped', replay_steps: int = 0, replay_ratio: float = 1.0,
        replay_batch_size: int = 32, optimizer_fn=trainer.make_optimizer,
        mesh_fn=partitioning.make_mesh, dsi_tasks: docgen.DsiTasks | None = None,
        eval_batch_size: int = 16, export: bool = True,
        export_fn: Callable[[str], str] = retrieval_export.export, seed: int = 0) -> dict:
  """Adds `documents` to the retriever in `retriever`, writing the updated
  run folder into `workdir` (module docstring). Returns the row of figures
  (also <workdir>/row.json): documents before and after, the seconds each
  part took and, with `eval_collection`, the metrics on its `eval_split`.
  With `export`, `export_fn(workdir)` writes the serving directory (gin:
  `@export.export`, whose own bindings apply)."""
  config_check.check_arguments(add, dict(locals()))
  if atomic_rows not in ATOMIC_ROWS:
    raise ValueError(f'atomic_rows must be one of {ATOMIC_ROWS}, not {atomic_rows!r}.')
  if os.path.abspath(workdir) == os.path.abspath(retriever):
    raise ValueError(f'--workdir is the retriever\'s own folder ({retriever}): the updated '
                     'retriever goes into a new folder, so that the trained one stays intact.')
  t_start = time.time()
  run, config, pred, params, step = retrieval_export.load(retriever, mesh_fn)
  method, shift = run['method'], run.get('docid_token_shift', 0)
  if run.get('title_len'):
    raise ValueError(f'{retriever} is a DSI run with title identifiers (DsiTasks.title_len); '
                     'adding documents to it is not supported.')
  if method == 'seal' and replay_steps:
    raise ValueError('SEAL needs no replay training to retrieve new documents (its identifiers '
                     'are their n-grams, found by the rebuilt FM-index): set replay_steps = 0.')
  old_ids = sequences.read_lines(os.path.join(retriever, docgen.DOC_IDS))
  old = corpus.load_beir(collection, data_dir)
  if old.doc_ids != old_ids:
    raise ValueError(f'The collection {collection!r} ({old.num_docs} documents) is not the one '
                     f'{retriever} was trained on ({len(old_ids)} documents in '
                     f'{docgen.DOC_IDS}): set COLLECTION / DATA_DIR to that collection.')
  new = read_documents(documents, set(old_ids))
  both = combined(old, new)
  sp = _tokenizer(retriever, run)
  loop.make_workdir(workdir)
  checkpoint = config.encoder_checkpoint or None
  cache_dir = os.path.join(os.path.dirname(os.path.normpath(retriever)), 'cache')
  timings, extra = {}, {}
  host = jax.tree.map(np.array, jax.device_get(params))
  new_config = config
  t0 = time.time()
  if method == 'seal':
    tc = corpus.TokenizedCollection.build(both, sp)
    fm = fm_index.FMIndex.build(tc.doc_tokens, sp.get_piece_size())
    timings['index_s'] = time.time() - t0
    ids = None
  else:
    ids0 = ItemIds.load(os.path.join(retriever, 'ids'))
    kind = ids0.scheme.split('-')[0]
    needs_content = kind not in ('naive',) and (kind != 'atomic' or atomic_rows != 'mean')
    emb_old = emb_new = None
    if needs_content:
      t_enc = time.time()
      emb_old = docgen.document_embeddings(old, cache_dir, checkpoint)
      emb_new = docgen.document_embeddings(new, None, checkpoint)
      timings['encode_s'] = time.time() - t_enc
    t0 = time.time()
    ids = extend_ids.extend(ids0, new.num_docs, None if kind == 'atomic' else emb_new, emb_old)
    used = (NUM_RESERVED_TOKENS if shift == 0 else shift + NUM_RESERVED_TOKENS) + sum(
        ids.level_sizes)
    new_config = dataclasses.replace(config, vocab_size=-(-used // 128) * 128)
    docid_tokens = slice(shift + NUM_RESERVED_TOKENS,
                         shift + NUM_RESERVED_TOKENS + sum(ids0.level_sizes))
    host = grow_vocab(host, config.vocab_size, new_config.vocab_size, docid_tokens)
    if kind == 'atomic' and atomic_rows != 'mean':
      table = host['embed']
      rows_old = ids0.token_table()[1:, 0] + shift
      rows_new = ids.token_table()[old.num_docs + 1:, 0] + shift
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
    timings['update_s'] = time.time() - t0
    extra['id_scheme'] = ids.scheme
    fm = None
  tasks = dsi_tasks or docgen.DsiTasks()
  arrays, n_new_ex, n_old_ex = None, 0, 0
  if replay_steps:
    tc = corpus.TokenizedCollection.build(both, sp)
    arrays, n_new_ex, n_old_ex = _replay_arrays(tc, ids, shift, tasks, old.num_docs,
                                                run['input_len'], seed, replay_ratio)
  else:  # the updated parameters are saved as a checkpoint of step 0
    width = ids.num_levels if ids else 1
    arrays = seq2seq.arrays([[1]] * replay_batch_size, [[1] * width] * replay_batch_size,
                            run['input_len'], width)
  settings = {'method': method, 'retriever': os.path.abspath(retriever),
              'retriever_step': step, 'documents': os.path.abspath(documents),
              'new_documents': new.num_docs, 'atomic_rows': atomic_rows,
              'replay_ratio': replay_ratio,
              **({'tasks': docgen.settings_repr(tasks)} if replay_steps else {})}
  tr, mesh, state, replay_s, loss = seq2seq.train(
      workdir, 'replay', arrays, new_config, lambda n: optimizer_fn(max(n, 1)), mesh_fn,
      replay_steps, replay_batch_size, seed, 50, settings, lambda _: host)
  timings['replay_s'] = replay_s or 0.0
  # The run folder's serving inputs, as the retrieval run mode writes them.
  tc_files = corpus.TokenizedCollection(both, sp, [], np.zeros(0), {})
  if jax.process_index() == 0:
    docgen.save_serving_inputs(
        workdir, tc_files, method, new_config, run['input_len'], run['beam_size'], ids=ids,
        shift=shift, fm=fm,
        extra={k: run[k] for k in ('ngram_len', 'scorer') if k in run} | {
            'added_documents': new.num_docs, 'added_to': os.path.abspath(retriever)})
  row = {'method': method, 'retriever': retriever, 'documents_before': old.num_docs,
         'documents_added': new.num_docs, 'replay_steps': replay_steps,
         'replay_examples': {'new': n_new_ex, 'old': n_old_ex} if replay_steps else None,
         'atomic_rows': atomic_rows if method == 'dsi_atomic' else None, **extra,
         **{k: round(v, 1) for k, v in timings.items()},
         'final_loss': None if loss is None else round(loss, 4)}
  row['total_s'] = round(time.time() - t_start, 1)
  row.update(tables.provenance())
  if eval_collection:
    row.update(evaluate(workdir, tr, mesh, state.params, run, new_config, sp, ids, shift, fm,
                        both, eval_collection, data_dir, eval_split, eval_batch_size))
  loop.write_json(os.path.join(workdir, 'row.json'), row)
  if export and jax.process_index() == 0:
    row['serving'] = export_fn(workdir)
  logging.info('add_documents: %s', row)
  return row


def evaluate(workdir: str, pred, mesh, params, run: dict, config: models.TransformerConfig,
             sp, ids: ItemIds | None, shift: int, fm: fm_index.FMIndex | None,
             both: corpus.Collection, eval_collection: str, data_dir: str | None,
             split: str, batch_size: int) -> dict:
  """The updated retriever on `eval_collection`'s `split` queries (their
  relevant documents must be among the old and new ones): metrics, ms/query,
  and <workdir>/<split>.trec."""
  ev = corpus.load_beir(eval_collection, data_dir)
  if split not in ev.qrels:
    raise ValueError(f'{eval_collection} has no qrels split {split!r} (has {sorted(ev.qrels)}).')
  known = set(both.doc_ids)
  missing = {d for docs in ev.qrels[split].values() for d in docs} - known
  if missing:
    raise ValueError(f'{len(missing)} documents judged in {eval_collection}/{split} are neither '
                     f'old nor added (e.g. {sorted(missing)[:3]}): evaluate on a collection of '
                     'the old and added documents.')
  qids = sorted(ev.qrels[split], key=lambda q: (len(q), q))
  inputs = seq2seq.pad([sp.encode(ev.queries[q]) for q in qids], run['input_len'])
  if run['method'] == 'seal':
    allowed = fm_index.NGramConstraint(fm, config.vocab_size)
    tc = corpus.TokenizedCollection(both, sp, [], np.zeros(0), {})

    def search(qids, inputs):
      seqs, logp = docgen.seal_search(pred, params, mesh, inputs, allowed, run['beam_size'],
                                      run['ngram_len'], batch_size)
      return docgen.rescore_seal(qids, seqs, logp, docgen.SealScorer(**run['scorer']), tc,
                                 fm)[:2]
  else:
    trie = constraints.PrefixTrie.from_codes(ids.codes[1:], ids.level_sizes,
                                             ids.level_offsets + shift)

    def search(qids, inputs):
      tokens, beam_scores = docgen.dsi_search(pred, params, mesh, inputs, trie,
                                              run['beam_size'], ids.num_levels, batch_size)
      ranked, scores = {}, {}
      for q, row, sc in zip(qids, ids.tokens_to_items(tokens - shift), beam_scores):
        ranked[q] = [both.doc_ids[i - 1] for i in row if i > 0]
        scores[q] = [float(v) for i, v in zip(row, sc) if i > 0]
      return ranked, scores
  search(qids[:batch_size], inputs[:batch_size])  # compiles: ms_per_query is the warm latency
  t0 = time.time()
  ranked, scores = search(qids, inputs)
  eval_s = time.time() - t0
  if jax.process_index() == 0:
    corpus.write_trec_run(os.path.join(workdir, f'{split}.trec'), ranked, scores,
                          run['method'])
  m = corpus.retrieval_metrics(ranked, ev.qrels[split], grades=ev.grades.get(split))
  return {**{k: round(v, 4) for k, v in m.items()}, 'eval_collection': eval_collection,
          'eval_split': split, 'queries': len(qids),
          'ms_per_query': round(eval_s / len(qids) * 1e3, 1)}
