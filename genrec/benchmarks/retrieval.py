r"""Document-retrieval table on a BEIR-style collection (default: cranfield).

  python -m genrec.benchmarks.retrieval --data_dir=../shared/data \
      --output_dir=runs/retrieval [--methods=bm25,dsi_atomic,dsi_naive,dsi_semantic,seal] \
      [--gin_file=gin/retrieval/cranfield.gin] [--gin_bindings=...]

Trains the collection's SentencePiece vocabulary, then one row per method,
all scored on the same test queries: BM25 over that tokenization (the
reference), the three DSI docid schemes and SEAL-style n-gram identifiers
(`genrec.docgen`), each trained with the gin file's budget. Metrics:
Recall@1/10/100, nDCG@10, MRR@10 with binary relevance. Each method's row is
also saved as <output_dir>/<method>/row.json, and a method whose folder holds
a final checkpoint is evaluated without training again; `--table_only`
re-tabulates the saved rows. Writes retrieval.md/.csv.
"""

import json
import os

from absl import app, flags, logging
import gin
import sentencepiece as spm

from genrec import docgen, fm_index, retrieval
from genrec.benchmarks import tables

flags.DEFINE_string('collection', 'cranfield', 'Collection folder under the data dir.')
flags.DEFINE_string('data_dir', None, 'Data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('split', 'test', 'qrels split to evaluate.')
flags.DEFINE_integer('vocab_size', 8000, 'SentencePiece vocabulary size (upper bound).')
flags.DEFINE_string('output_dir', 'runs/retrieval', 'Where the vocabulary, runs and tables go.')
flags.DEFINE_list('methods', ['bm25', *docgen.METHODS], 'Rows of the table.')
flags.DEFINE_multi_string('gin_file', ['gin/retrieval/cranfield.gin'],
                          'Model size and training budget of the generative methods.')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
flags.DEFINE_bool('table_only', False, 'Only re-tabulate the rows saved in output_dir.')
FLAGS = flags.FLAGS

COLUMNS = ('method', 'recall@1', 'recall@10', 'recall@100', 'ndcg@10', 'mrr@10', 'queries',
           'training', 'train_s', 'ms_per_query', 'params_m', 'tokens')


def _row_path(method: str) -> str:
  return os.path.join(FLAGS.output_dir, method, 'row.json')


def _table(rows: list[dict], title: str) -> None:
  md = f'## {title}\n\n' + tables.markdown(rows, COLUMNS)
  print(md, flush=True)
  tables.write(md, rows, FLAGS.output_dir, 'retrieval')


def main(argv):
  del argv
  unknown = set(FLAGS.methods) - {'bm25', *docgen.METHODS}
  if unknown:
    raise app.UsageError(f'Unknown methods {sorted(unknown)}; choose from bm25, '
                         f'{", ".join(docgen.METHODS)}.')
  title = f'{FLAGS.collection}, {FLAGS.split} queries'
  if FLAGS.table_only:
    rows = [json.load(open(_row_path(m))) for m in FLAGS.methods if os.path.exists(_row_path(m))]
    _table(rows, title)
    return
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  c = retrieval.load_beir(FLAGS.collection, FLAGS.data_dir)
  model = os.path.join(FLAGS.output_dir, f'{FLAGS.collection}_spm{FLAGS.vocab_size}.model')
  if not os.path.exists(model):  # deterministic: parallel invocations may share it
    retrieval.train_sentencepiece(
        [retrieval.document_text(t, x) for t, x in zip(c.titles, c.texts)],
        model[:-len('.model')], FLAGS.vocab_size)
  sp = spm.SentencePieceProcessor(model_file=model)
  tc = docgen.TokenizedCollection.build(c, sp)
  fm = fm_index.FMIndex.build(tc.doc_tokens, sp.get_piece_size())
  rows = []
  for i, method in enumerate(FLAGS.methods):
    logging.info('[%d/%d] %s', i + 1, len(FLAGS.methods), method)
    if method == 'bm25':
      row = retrieval.bm25_row(c, sp, FLAGS.split)
    else:
      row = docgen.train_and_evaluate(method, tc, os.path.join(FLAGS.output_dir, method),
                                      eval_split=FLAGS.split, fm=fm,
                                      cache_dir=os.path.join(FLAGS.output_dir, 'cache'))
    os.makedirs(os.path.dirname(_row_path(method)), exist_ok=True)
    with open(_row_path(method), 'w') as f:
      json.dump(row, f, indent=1)
    rows.append(row)
    _table(rows, title)  # the table so far, after every method
  with open(os.path.join(FLAGS.output_dir, 'config.gin'), 'w') as f:
    f.write(gin.operative_config_str())


if __name__ == '__main__':
  app.run(main)
