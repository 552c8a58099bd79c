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

from genrec import config_check, loop, partitioning, tables, text_encoder, trainer
from genrec.data import sequences
from genrec.retrieval import corpus, docgen, dsi, run_folder, seq2seq
from genrec.retrieval.method import Index, Model
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


def _tokenizer(retriever: str, run: dict):
  if os.path.exists(os.path.join(retriever, run_folder.SPM_MODEL)):
    return spm.SentencePieceProcessor(model_file=os.path.join(retriever, run_folder.SPM_MODEL))
  return text_encoder.WordPieceVocabulary(run['model_config'].get('encoder_checkpoint') or None)


def _replay_arrays(index: dsi.DsiIndex, num_old: int, input_len: int, seed: int,
                   replay_ratio: float):
  """The new documents' indexing examples and `replay_ratio` times as many of
  the old training mixture (indexing and train queries) of `index` (DSI over
  the old and new documents), shuffled."""
  ids, shift = index.ids, index.shift
  arrays = index.examples('train', input_len, seed)
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
        mesh_fn=partitioning.make_mesh, dsi_tasks: dsi.DsiTasks | None = None,
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
  if run.get('title_len'):
    raise ValueError(f'{retriever} is a DSI run with title identifiers (DsiTasks.title_len); '
                     'adding documents to it is not supported.')
  method = docgen.make_method(run['method']).for_run(run)
  method.check_replay(replay_steps)
  old_ids = sequences.read_lines(os.path.join(retriever, run_folder.DOC_IDS))
  old = corpus.load_beir(collection, data_dir)
  if old.doc_ids != old_ids:
    raise ValueError(f'The collection {collection!r} ({old.num_docs} documents) is not the one '
                     f'{retriever} was trained on ({len(old_ids)} documents in '
                     f'{run_folder.DOC_IDS}): set COLLECTION / DATA_DIR to that collection.')
  new = read_documents(documents, set(old_ids))
  both = combined(old, new)
  sp = _tokenizer(retriever, run)
  loop.make_workdir(workdir)
  grown = method.grow(retriever, run, old, new, both, sp,
                      jax.tree.map(np.array, jax.device_get(params)), config,
                      cache_dir=os.path.join(os.path.dirname(os.path.normpath(retriever)),
                                             'cache'), atomic_rows=atomic_rows)
  index, timings = grown.index, grown.timings
  arrays, n_new_ex, n_old_ex = None, 0, 0
  if replay_steps:  # DSI only (SEAL refused it)
    method = dataclasses.replace(method, tasks=dsi_tasks or method.tasks)
    replay_index = dataclasses.replace(
        index, method=dataclasses.replace(method, tasks=dataclasses.replace(method.tasks,
                                                                            title_len=0)),
        tc=corpus.TokenizedCollection.build(both, sp))
    arrays, n_new_ex, n_old_ex = _replay_arrays(replay_index, old.num_docs, run['input_len'],
                                                seed, replay_ratio)
  else:  # the updated parameters are saved as a checkpoint of step 0 (no step reads these)
    arrays = seq2seq.arrays([[1]] * replay_batch_size, [[1]] * replay_batch_size,
                            run['input_len'], 1)
  settings = {'method': method.name, 'retriever': os.path.abspath(retriever),
              'retriever_step': step, 'documents': os.path.abspath(documents),
              'new_documents': new.num_docs, 'atomic_rows': atomic_rows,
              'replay_ratio': replay_ratio,
              **({'tasks': method.tasks_repr()} if replay_steps else {})}
  tr, mesh, state, replay_s, loss = seq2seq.train(
      workdir, 'replay', arrays, grown.config, lambda n: optimizer_fn(max(n, 1)), mesh_fn,
      replay_steps, replay_batch_size, seed, 50, settings, lambda _: grown.params)
  timings['replay_s'] = replay_s or 0.0
  # The run folder's serving inputs, as the retrieval run mode writes them.
  if jax.process_index() == 0:
    index.save_serving_inputs(
        workdir, grown.config, run['input_len'],
        extra={k: run[k] for k in ('ngram_len', 'scorer') if k in run} | {
            'added_documents': new.num_docs, 'added_to': os.path.abspath(retriever)})
  row = {'method': method.name, 'retriever': retriever, 'documents_before': old.num_docs,
         'documents_added': new.num_docs, 'replay_steps': replay_steps,
         'replay_examples': {'new': n_new_ex, 'old': n_old_ex} if replay_steps else None,
         **grown.row, **{k: round(v, 1) for k, v in timings.items()},
         'final_loss': None if loss is None else round(loss, 4)}
  row['total_s'] = round(time.time() - t_start, 1)
  row.update(tables.provenance())
  if eval_collection:
    row.update(evaluate(workdir, index, Model(tr, state.params, mesh, eval_batch_size),
                        run['input_len'], eval_collection, data_dir, eval_split))
  loop.write_json(os.path.join(workdir, 'row.json'), row)
  if export and jax.process_index() == 0:
    row['serving'] = export_fn(workdir)
  logging.info('add_documents: %s', row)
  return row


def evaluate(workdir: str, index: Index, model: Model, input_len: int,
             eval_collection: str, data_dir: str | None, split: str) -> dict:
  """The updated retriever (`index` over the old and added documents, the
  trained `model`) on `eval_collection`'s `split` queries (their relevant
  documents must be among the old and new ones): metrics, ms/query, and
  <workdir>/<split>.trec."""
  ev = corpus.load_beir(eval_collection, data_dir)
  if split not in ev.qrels:
    raise ValueError(f'{eval_collection} has no qrels split {split!r} (has {sorted(ev.qrels)}).')
  known = set(index.tc.collection.doc_ids)
  missing = {d for docs in ev.qrels[split].values() for d in docs} - known
  if missing:
    raise ValueError(f'{len(missing)} documents judged in {eval_collection}/{split} are neither '
                     f'old nor added (e.g. {sorted(missing)[:3]}): evaluate on a collection of '
                     'the old and added documents.')
  qids = sorted(ev.qrels[split], key=lambda q: (len(q), q))
  inputs = seq2seq.pad([index.tc.sp.encode(ev.queries[q]) for q in qids], input_len)
  n = model.batch_size
  index.retrieve(model, qids[:n], inputs[:n])  # compiles: ms_per_query is the warm latency
  t0 = time.time()
  ranked, scores, _ = index.retrieve(model, qids, inputs)
  eval_s = time.time() - t0
  if jax.process_index() == 0:
    corpus.write_trec_run(os.path.join(workdir, f'{split}.trec'), ranked, scores,
                          index.method.name)
  m = corpus.retrieval_metrics(ranked, ev.qrels[split], grades=ev.grades.get(split))
  return {**{k: round(v, 4) for k, v in m.items()}, 'eval_collection': eval_collection,
          'eval_split': split, 'queries': len(qids),
          'ms_per_query': round(eval_s / len(qids) * 1e3, 1)}
