r"""Documents added to a trained retriever without retraining (SQuAD).

  # 1. the collection without 10% of its articles, and those articles' documents:
  python -m genrec.benchmarks.incremental_indexing --step=prepare \
      --source=squad --out=$HOME/genrec-runs/squad_incremental
  # 2. train on the old documents (the retrieval run mode, the printed command)
  # 3. add the held-out documents (gin/runs/add_documents.gin, the printed
  #    commands), with and without a short replay training
  # 4. the table:
  python -m genrec.benchmarks.incremental_indexing --step=table \
      --out=$HOME/genrec-runs/squad_incremental --full=$HOME/genrec-runs/squad/minilm/dsi_atomic \
      --table_dir=docs/results --table_stem=incremental_indexing

`prepare` holds out `--fraction` of the articles (documents that share a
title; all their paragraphs and questions), chosen with `--seed`: it writes
<out>/data/<source>_old/ (a BEIR folder of the other documents, their
training questions and their test questions) and <out>/added.jsonl (the
held-out documents, corpus.jsonl lines). With the source's MiniLM document
embeddings cached (`--embeddings`, the .npy that a run of the source wrote
under <run>/cache/), it also writes the old collection's cache file, so that
the old run does not encode the documents again.

`table` evaluates every run file of the test questions of the full
collection, split into questions about the added documents and about the old
ones (forgetting): R@1, R@10, MRR@10 and the time each way of indexing took.
"""

import collections
import hashlib
import json
import os

from absl import app, flags, logging
import numpy as np

from genrec.data import sequences
from genrec.retrieval import corpus

flags.DEFINE_enum('step', 'table', ['prepare', 'table'], 'What to do (module docstring).')
flags.DEFINE_string('source', 'squad', 'The collection under the data dir (prepare).')
flags.DEFINE_string('data_dir', None, 'The data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('out', None, 'The experiment folder.')
flags.DEFINE_float('fraction', 0.1, 'Share of the articles held out (prepare).')
flags.DEFINE_integer('seed', 0, 'Chooses the held-out articles (prepare).')
flags.DEFINE_string('embeddings', None, 'The source\'s cached MiniLM document embeddings '
                    '(.npy, rows in corpus order) to slice for the old collection (prepare).')
FLAGS = flags.FLAGS

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
  """The file name under which `docgen.document_embeddings` caches a
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


def main(argv):
  del argv
  if not FLAGS.out:
    raise app.UsageError('--out is required.')
  if FLAGS.step == 'prepare':
    print(json.dumps(prepare(FLAGS.source, FLAGS.out, FLAGS.fraction, FLAGS.seed,
                             FLAGS.data_dir, FLAGS.embeddings), indent=1))


if __name__ == '__main__':
  app.run(main)
