r"""Document-retrieval table on a BEIR-style collection (default: cranfield).

  python -m genrec.benchmarks.retrieval --data_dir=../shared/data --output_dir=runs/retrieval

Trains the collection's SentencePiece vocabulary (titles + texts), then
scores the test queries. Rows today: BM25 over that tokenization (the
reference the generative methods are measured against). Metrics: Recall@1/
10/100, nDCG@10, MRR@10 with binary relevance. Writes retrieval.md/.csv.
"""

import os
import time

from absl import app, flags
import sentencepiece as spm

from genrec import retrieval
from genrec.benchmarks import tables

flags.DEFINE_string('collection', 'cranfield', 'Collection folder under the data dir.')
flags.DEFINE_string('data_dir', None, 'Data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('split', 'test', 'qrels split to evaluate.')
flags.DEFINE_integer('vocab_size', 8000, 'SentencePiece vocabulary size (upper bound).')
flags.DEFINE_string('output_dir', 'runs/retrieval', 'Where the vocabulary and tables go.')
FLAGS = flags.FLAGS


def bm25_row(c: retrieval.Collection, sp: spm.SentencePieceProcessor, split: str) -> dict:
  t0 = time.perf_counter()
  docs = [sp.encode(f'{t} {x}') for t, x in zip(c.titles, c.texts)]
  index = retrieval.BM25(docs, sp.get_piece_size())
  build_s = time.perf_counter() - t0
  qrels = c.qrels[split]
  t0 = time.perf_counter()
  ranked = {q: [c.doc_ids[i] for i in index.search(sp.encode(c.queries[q]), 100)]
            for q in qrels}
  query_ms = (time.perf_counter() - t0) / len(qrels) * 1e3
  m = retrieval.retrieval_metrics(ranked, qrels)
  return {'method': 'BM25 (k1 0.9, b 0.4)', 'tokens': f'SentencePiece {sp.get_piece_size()}',
          **{k: round(v, 4) for k, v in m.items()}, 'queries': len(qrels),
          'training': 'none', 'index_s': round(build_s, 2), 'ms_per_query': round(query_ms, 2)}


def main(argv):
  del argv
  c = retrieval.load_beir(FLAGS.collection, FLAGS.data_dir)
  model = retrieval.train_sentencepiece(
      [f'{t} {x}' for t, x in zip(c.titles, c.texts)],
      os.path.join(FLAGS.output_dir, f'{FLAGS.collection}_spm'), FLAGS.vocab_size)
  sp = spm.SentencePieceProcessor(model_file=model)
  rows = [bm25_row(c, sp, FLAGS.split)]
  cols = list(rows[0])
  md = '\n'.join([f'## {c.name}, {FLAGS.split} queries', '',
                  '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
                 + ['| ' + ' | '.join(str(r[k]) for k in cols) + ' |' for r in rows])
  print(md, flush=True)
  tables.write(md, rows, FLAGS.output_dir, 'retrieval')


if __name__ == '__main__':
  app.run(main)
