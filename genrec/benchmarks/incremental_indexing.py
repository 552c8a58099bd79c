r"""Documents and items added to trained models without retraining: the
experiments behind docs/results/incremental_indexing.md.

Documents (SQuAD):

  # 1. the collection without 10% of its articles, and those articles' documents:
  python -m genrec.benchmarks.incremental_indexing --step=prepare \
      --source=squad --out=$HOME/genrec-runs/squad_incremental \
      [--embeddings=<a squad run>/cache/squad-doc-minilm-<digest>.npy]
  # 2. the retrieval run mode on <out>/data/squad_old (--workdir=<out>/old)
  # 3. the add-documents run mode (gin/runs/add_documents.gin) into <out>/added*,
  #    RETRIEVER=<out>/old/dsi_atomic, EVAL_COLLECTION='squad' (with and
  #    without REPLAY_STEPS)

Items (Beauty):

  # 1. Beauty as a folder without the items that first appear as test targets:
  python -m genrec.benchmarks.incremental_indexing --step=prepare_items \
      --source=amazon-2014/beauty --out=$HOME/genrec-runs/beauty_cold
  # 2. gin/recommendation/folder_item_sid.gin on <out>/data/beauty_old (--workdir=<out>/old_run)
  # 3. the add-items run mode (gin/runs/add_items.gin) into <out>/old_run_added

The table of both:

  python -m genrec.benchmarks.incremental_indexing --step=table \
      --out=$HOME/genrec-runs/squad_incremental --full=<the squad run>/dsi_atomic \
      --items_out=$HOME/genrec-runs/beauty_cold --items_full=<a Beauty folder run with every item> \
      --table_dir=docs/results --table_stem=incremental_indexing

`prepare` holds out `--fraction` of the articles (documents that share a
title; all their paragraphs and questions), chosen with `--seed`: it writes
<out>/data/<source>_old/ (a BEIR folder of the other documents, their
training questions and their test questions) and <out>/added.jsonl (the
held-out documents, corpus.jsonl lines). With the source's MiniLM document
embeddings cached (`--embeddings`), it also writes the old collection's
cache file under <out>/old/cache, so that the old run does not encode the
documents again (the same encoder gives the same rows).

`prepare_items` writes <out>/data/<name>_old/ (interactions.tsv and
item_text.jsonl keyed by ASIN, without the held-out items: those that only
ever appear as a user's last item), <out>/added_items.jsonl (their text) and
<out>/test_histories.jsonl (every user's test history and target).

`table` scores every run on the test questions of the full collection (users
of the full data set), split into those about the added documents (items)
and about the old ones (forgetting): R@1, R@10, MRR@10, nDCG@10 and the
seconds each way of indexing took; the recommendation runs answer through
the infer run mode (their predictions are kept in each run's predictions/).
"""

import collections
import glob
import hashlib
import json
import os

from absl import app, flags, logging
import numpy as np

from genrec import tables
from genrec.data import sequences
from genrec.retrieval import corpus, fusion


def _define_flags() -> None:
  """The command line's flags (defined when run as a script: other benchmarks
  define flags of the same names)."""
  flags.DEFINE_enum('step', 'table', ['prepare', 'prepare_items', 'table'],
                    'What to do (module docstring).')
  flags.DEFINE_string('source', 'squad', 'The collection under the data dir (prepare).')
  flags.DEFINE_string('data_dir', None, 'The data dir (default $GENREC_DATA_DIR).')
  flags.DEFINE_string('out', None, 'The experiment folder.')
  flags.DEFINE_float('fraction', 0.1, 'Share of the articles held out (prepare).')
  flags.DEFINE_integer('seed', 0, 'Chooses the held-out articles (prepare).')
  flags.DEFINE_string('embeddings', None, 'The source\'s cached MiniLM document embeddings '
                      '(.npy, rows in corpus order) to slice for the old collection '
                      '(prepare).')
  flags.DEFINE_string('full', None, 'The dsi_atomic folder of the run trained on the whole '
                      'collection (table).')
  flags.DEFINE_string('items_out', None, 'The recommendation experiment folder '
                      '(prepare_items).')
  flags.DEFINE_string('items_full', None, 'A run trained with every item (table).')
  flags.DEFINE_string('table_dir', None, 'Where the table goes (default --out).')
  flags.DEFINE_string('table_stem', 'incremental_indexing', 'The table\'s file name.')


ADDED = 'added.jsonl'


def article_of(doc_id: str, title: str) -> str:
  """The article a document belongs to: its title (SQuAD: the Wikipedia
  article of the paragraph), else its id."""
  return title.strip() or doc_id


def held_out_articles(c: corpus.Collection, fraction: float, seed: int) -> set[str]:
  """`fraction` of the collection's articles (at least one), chosen with `seed`."""
  articles = sorted({article_of(d, t) for d, t in zip(c.doc_ids, c.titles)})
  n = max(1, round(fraction * len(articles)))
  return set(np.random.default_rng(seed).choice(articles, n, replace=False).tolist())


def embeddings_cache_name(name: str, titles: list[str], texts: list[str]) -> str:
  """The file name under which `dsi.document_embeddings` caches a
  collection's MiniLM embeddings (the default encoder)."""
  key = [corpus.document_text(t, x) for t, x in zip(titles, texts)]
  return f'{name}-doc-minilm-{hashlib.sha256(chr(0).join(key).encode()).hexdigest()[:16]}.npy'


def prepare(source: str, out: str, fraction: float = 0.1, seed: int = 0,
            data_dir: str | None = None, embeddings: str | None = None) -> dict:
  """Writes the old collection and the added documents (module docstring);
  returns their counts."""
  c = corpus.load_beir(source, data_dir)
  held = held_out_articles(c, fraction, seed)
  added = {d for d, t in zip(c.doc_ids, c.titles) if article_of(d, t) in held}
  old_rows = [i for i, d in enumerate(c.doc_ids) if d not in added]
  name = f'{source}_old'
  root = os.path.join(out, 'data', name)
  os.makedirs(os.path.join(root, 'qrels'), exist_ok=True)
  src = os.path.join(sequences.resolve_data_dir(data_dir), source)
  with open(os.path.join(src, 'corpus.jsonl')) as f:
    lines = [line for line in f if line.strip()]
  with open(os.path.join(root, 'corpus.jsonl'), 'w') as old, \
       open(os.path.join(out, ADDED), 'w') as new:
    for line in lines:
      (new if str(json.loads(line)['_id']) in added else old).write(line)
  with open(os.path.join(src, 'queries.jsonl')) as f, \
       open(os.path.join(root, 'queries.jsonl'), 'w') as g:
    g.writelines(f)
  counts = collections.Counter()
  for split, judged in c.grades.items():
    with open(os.path.join(root, 'qrels', f'{split}.tsv'), 'w') as f:
      f.write('query-id\tcorpus-id\tscore\n')
      for q, docs in judged.items():
        if any(d in added for d in docs):  # a question about a held-out document
          counts[f'{split}_questions_added'] += 1
          continue
        counts[f'{split}_questions_old'] += 1
        for d, g in docs.items():
          f.write(f'{q}\t{d}\t{g}\n')
  if embeddings:
    emb = np.load(embeddings)
    if len(emb) != c.num_docs:
      raise ValueError(f'{embeddings} has {len(emb)} rows; {source} has {c.num_docs} '
                       'documents: give the embeddings cached by a run of that collection.')
    cache = os.path.join(out, 'old', 'cache')
    os.makedirs(cache, exist_ok=True)
    np.save(os.path.join(cache, embeddings_cache_name(
        name, [c.titles[i] for i in old_rows], [c.texts[i] for i in old_rows])), emb[old_rows])
  info = {'source': source, 'fraction': fraction, 'seed': seed, 'articles_held_out': len(held),
          'documents_old': len(old_rows), 'documents_added': len(added), **counts}
  with open(os.path.join(out, 'split.json'), 'w') as f:
    json.dump({**info, 'articles': sorted(held)}, f, indent=1)
  logging.info('prepare: %s', info)
  return info


HISTORIES = 'test_histories.jsonl'
ADDED_ITEMS = 'added_items.jsonl'


def prepare_items(source: str, out: str, data_dir: str | None = None) -> dict:
  """The recommendation experiment: from the Amazon-format folder `source`
  (sequences.txt of item numbers, item_text.jsonl with ASINs) writes
  <out>/data/<name>_old/ (interactions.tsv and item_text.jsonl keyed by ASIN,
  without the items that first appear as a test target: the last item of a
  user's sequence that no earlier position of any sequence holds),
  <out>/added_items.jsonl (those items' text) and <out>/test_histories.jsonl
  (every user's leave-one-out test history and target, in ASINs)."""
  src = os.path.join(sequences.resolve_data_dir(data_dir), source)
  texts = {}
  for _, row in sequences.json_objects(os.path.join(src, 'item_text.jsonl'), 'item text'):
    texts[int(row['item'])] = row
  seqs = []
  for line in sequences.read_lines(os.path.join(src, 'sequences.txt')):
    user, *items = line.split()
    seqs.append((user, [int(i) for i in items]))
  earlier = {i for _, s in seqs for i in s[:-1]}
  held = sorted({s[-1] for _, s in seqs} - earlier)
  name = os.path.basename(os.path.normpath(source)) + '_old'
  root = os.path.join(out, 'data', name)
  os.makedirs(root, exist_ok=True)
  def asin(i):
    return texts[i]['asin']

  def fields(i):
    return {'item': asin(i), **{k: texts[i][k] for k in ('title', 'brand', 'categories')
                                if k in texts[i]}}
  with open(os.path.join(root, 'interactions.tsv'), 'w') as f:
    f.write('user\titem\ttimestamp\n')
    for user, s in seqs:
      for t, i in enumerate(s):
        if i not in held:
          f.write(f'u{user}\t{asin(i)}\t{1_400_000_000 + 86_400 * t}\n')
  with open(os.path.join(root, 'item_text.jsonl'), 'w') as f:
    f.writelines(json.dumps(fields(i)) + '\n' for i in sorted(texts) if i not in held)
  with open(os.path.join(out, ADDED_ITEMS), 'w') as f:
    f.writelines(json.dumps(fields(i)) + '\n' for i in held)
  with open(os.path.join(out, HISTORIES), 'w') as f:
    for user, s in seqs:
      f.write(json.dumps({'user': f'u{user}', 'history': [asin(i) for i in s[:-1]],
                          'target': asin(s[-1])}) + '\n')
  info = {'source': source, 'items': len(texts), 'items_held_out': len(held),
          'users': len(seqs), 'test_users_of_held_out_items': sum(s[-1] in held for _, s in seqs)}
  with open(os.path.join(out, 'split.json'), 'w') as f:
    json.dump({**info, 'held_out': [asin(i) for i in held]}, f, indent=1)
  logging.info('prepare_items: %s', info)
  return info


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
RETRIEVAL_METRICS = ('recall@1', 'recall@10', 'mrr@10')
COLUMNS = ('data set', 'indexing', 'questions about', 'queries', *RETRIEVAL_METRICS,
           'ndcg@10', 'seconds', 'what the seconds are', 'machine', 'date', 'commit', 'command')


def _json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _subset_rows(label: str, ranked: dict, qrels: dict, groups: dict[str, set[str]],
                 base: dict) -> list[dict]:
  """One row per group of queries (and all) of a run's per-query metrics."""
  per_query = corpus.per_query_metrics(ranked, qrels)
  out = []
  for group, queries in groups.items():
    ms = [per_query[q] for q in queries]
    out.append({**base, 'indexing': label, 'questions about': group, 'queries': len(ms),
                **{k: round(float(np.mean([m[k] for m in ms])), 4)
                   for k in (*RETRIEVAL_METRICS, 'ndcg@10')}})
  return out


def squad_rows(out: str, full: str, data_dir: str | None = None) -> list[dict]:
  """The retrieval experiment's rows: each way of indexing the added
  documents, on the test questions about them, about the old ones, and all.

  `out`: the experiment folder (old/, added*/ of the add-documents run mode);
  `full`: the dsi_atomic folder of the run trained on the whole collection
  (its sibling bm25/ gives BM25 over the whole collection)."""
  info = _json(os.path.join(out, 'split.json'))
  c = corpus.load_beir(info['source'], data_dir)
  added = {str(json.loads(line)['_id']) for line in sequences.read_lines(
      os.path.join(out, ADDED))}
  qrels = c.qrels['test']
  groups = {'added documents': {q for q, d in qrels.items() if d & added},
            'old documents': {q for q, d in qrels.items() if not d & added},
            'all': set(qrels)}
  runs = []
  bm25 = os.path.join(os.path.dirname(os.path.normpath(full)), 'bm25')
  if os.path.exists(os.path.join(bm25, 'row.json')):
    row = _json(os.path.join(bm25, 'row.json'))
    runs.append(('BM25, index built over all documents', bm25, row.get('index_s'),
                 'BM25 index', row))
  old = os.path.join(out, 'old', 'dsi_atomic')
  if os.path.exists(os.path.join(old, 'row.json')):
    row = _json(os.path.join(old, 'row.json'))
    runs.append(('DSI atomic trained without the added documents, no update', old, 0.0,
                 'none', row))
  for folder in sorted(glob.glob(os.path.join(out, 'added*', 'row.json'))):
    row = _json(folder)
    how = ('new docids, rows mapped from MiniLM' if row.get('atomic_rows') == 'mapped' else
           f"new docids, rows: {row.get('atomic_rows')}")
    how += (f", {row['replay_steps']} replay steps ({row['replay_examples']['new']} new + "
            f"{row['replay_examples']['old']} replayed examples)" if row['replay_steps']
            else ', no training')
    runs.append((f'DSI atomic + added documents: {how}', os.path.dirname(folder),
                 row['total_s'],
                 'the update (encoding, docids, rows, replay; not the re-export)', row))
  if os.path.exists(os.path.join(full, 'row.json')):
    row = _json(os.path.join(full, 'row.json'))
    runs.append(('DSI atomic retrained on all documents (and their training questions)', full,
                 row.get('train_s'),
                 f"training ({row.get('training', '').split(' (')[0]})", row))
  rows = []
  for label, folder, seconds, what, row in runs:
    ranked = fusion.read_trec_run(os.path.join(folder, 'test.trec'))[0]
    base = {'data set': f"SQuAD ({info['documents_old']} + {info['documents_added']} "
                        f"paragraphs, {info['articles_held_out']} articles held out)",
            'seconds': seconds, 'what the seconds are': what,
            **{k: row.get(k, '') for k in ('machine', 'date', 'commit', 'command')}}
    rows += _subset_rows(label, ranked, qrels, groups, base)
  return rows


def _recommendations(run: str, histories: str) -> dict[str, list[str]]:
  """The top-10 items (external ids) of every test history, by the infer run
  mode (its predictions file is reused when present)."""
  from genrec.recommendation import infer  # the training stack only for this table
  path = os.path.join(run, 'predictions', 'cold_start_test.predictions.jsonl')
  if not os.path.exists(path):
    infer.infer(run, histories, path, k=10)
  return {str(r['user']): [str(i) for i in r['items']]
          for _, r in sequences.json_objects(path, 'predictions')}


def items_rows(out: str, full: str | None) -> list[dict]:
  """The recommendation experiment's rows (`prepare_items`): the run trained
  without the held-out items, the same run with them added (add-items run
  mode: <out>/old_run_added*), and `full`, a run trained with them, on the
  test users whose target is a held-out item and on all test users."""
  info = _json(os.path.join(out, 'split.json'))
  held = set(info['held_out'])
  histories = os.path.join(out, HISTORIES)
  targets = {str(r['user']): r['target'] for _, r in sequences.json_objects(histories, 'h')}
  qrels = {u: {t} for u, t in targets.items()}
  groups = {'held-out (cold-start) items': {u for u, t in targets.items() if t in held},
            'all': set(targets)}
  runs = [('item-level model trained without the held-out items', os.path.join(out, 'old_run'),
           0.0, 'none')]
  for folder in sorted(glob.glob(os.path.join(out, 'old_run_added*', 'add_items.json'))):
    a = _json(folder)
    runs.append((f"the same + {a['items_added']} items added from their text (no training)",
                 os.path.dirname(folder), a['total_s'],
                 'the update (encoding, Semantic IDs; not the re-export)'))
  if full:
    runs.append(('item-level model trained with every item', full, None, 'training'))
  rows = []
  for label, folder, seconds, what in runs:
    if not os.path.exists(os.path.join(folder, 'results.json')) and 'added' not in label:
      continue
    meta = (_json(os.path.join(folder, 'add_items.json')) if 'added' in label
            else _json(os.path.join(folder, 'results.json')))
    if seconds is None:
      seconds = meta.get('train_seconds')
    base = {'data set': f"Beauty ({info['items'] - info['items_held_out']} + "
                        f"{info['items_held_out']} items)",
            'seconds': seconds, 'what the seconds are': what,
            'machine': meta.get('machine') or meta.get('host', ''),
            'date': meta.get('date', ''), 'commit': meta.get('commit', ''),
            'command': meta.get('command', '')}
    rows += _subset_rows(label, _recommendations(folder, histories), qrels, groups, base)
  return rows


def table(out: str | None, full: str | None, items_out: str | None, items_full: str | None,
          data_dir: str | None = None) -> tuple[str, list[dict]]:
  """The markdown and rows of both experiments (those given)."""
  md, rows = '## Adding documents and items without retraining\n', []
  if out:
    squad = squad_rows(out, full, data_dir)
    rows += squad
    md += ('\n### Documents: SQuAD, 10% of the articles added after training\n\n'
           'Test questions against all paragraphs (old and added); a question about an '
           'added paragraph is a miss for a retriever that does not know it.\n\n' +
           tables.markdown(squad, COLUMNS[:-4]) + '\n')
  if items_out:
    items = items_rows(items_out, items_full)
    rows += items
    md += ('\n### Items: Beauty, the items that first appear as test targets added after '
           'training\n\nTest users (leave-one-out) ranked over the whole catalog; R@1 and '
           'MRR@10 of the top-10 recommendations.\n\n' + tables.markdown(items, COLUMNS[:-4]) +
           '\n')
  md += '\n### Every row, with its command\n\n' + tables.markdown(rows, COLUMNS)
  return md, rows


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not (FLAGS.out or FLAGS.step == 'table' and FLAGS.items_out):
    raise app.UsageError('--out is required.')
  if FLAGS.step == 'prepare':
    print(json.dumps(prepare(FLAGS.source, FLAGS.out, FLAGS.fraction, FLAGS.seed,
                             FLAGS.data_dir, FLAGS.embeddings), indent=1))
  elif FLAGS.step == 'prepare_items':
    print(json.dumps(prepare_items(FLAGS.source, FLAGS.out, FLAGS.data_dir), indent=1))
  else:
    md, rows = table(FLAGS.out, FLAGS.full, FLAGS.items_out, FLAGS.items_full, FLAGS.data_dir)
    tables.write(md, rows, FLAGS.table_dir or FLAGS.out or FLAGS.items_out, FLAGS.table_stem)
    print(md)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
