r"""Document-retrieval table on a BEIR-style collection (default: cranfield).

  python -m genrec.benchmarks.retrieval --data_dir=../shared/data --output_dir=runs/retrieval

Trains the collection's SentencePiece vocabulary (titles + texts), then
scores the test queries. Rows today: BM25 over that tokenization (the
reference the generative methods are measured against). Metrics: Recall@1/
10/100, nDCG@10, MRR@10 with binary relevance. Writes retrieval.md/.csv.
"""

import os

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


def main(argv):
  del argv
  c = retrieval.load_beir(FLAGS.collection, FLAGS.data_dir)
  model = retrieval.train_sentencepiece(
      [f'{t} {x}' for t, x in zip(c.titles, c.texts)],
      os.path.join(FLAGS.output_dir, f'{FLAGS.collection}_spm'), FLAGS.vocab_size)
  sp = spm.SentencePieceProcessor(model_file=model)
  rows = [retrieval.bm25_row(c, sp, FLAGS.split)]
  md = f'## {c.name}, {FLAGS.split} queries\n\n' + tables.markdown(rows)
  print(md, flush=True)
  tables.write(md, rows, FLAGS.output_dir, 'retrieval')


if __name__ == '__main__':
  app.run(main)
