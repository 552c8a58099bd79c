r"""Document-retrieval table on a BEIR-style collection (default: cranfield);
the same as the retrieval run mode (genrec/retrieval/run.py) with flags.

  python -m genrec.benchmarks.retrieval --data_dir=../shared/data \
      --output_dir=runs/retrieval [--methods=bm25,dsi_atomic,dsi_naive,dsi_semantic,seal] \
      [--gin_file=gin/retrieval/cranfield.gin] [--gin_bindings=...]

Trains the collection's SentencePiece vocabulary, then one row per method,
all scored on the same test queries: BM25 over that tokenization (the
reference), the three DSI docid schemes and SEAL-style n-gram identifiers
(`genrec.retrieval.docgen`), each trained with the gin file's budget. Metrics:
Recall@1/10/100, nDCG@10 (binary and graded), MRR@10, and each generative
row's p-value against BM25 (paired randomization test on per-query nDCG@10,
genrec.retrieval.significance; `--table_only` adds it to saved rows from
their folders' run files; `--compare=BASE,OTHER` tests two run folders
method by method); with `hybrid`,
BM25 fused with each generative method (genrec.retrieval.fusion). Each method's row is
also saved as <output_dir>/<method>/row.json, and a method whose folder holds
a final checkpoint is evaluated without training again; `--table_only`
re-tabulates the saved rows (`--table_dir=docs/results --table_stem=...` for
the tables of record; `--table_keep=docs/results/<stem>.csv` keeps the rows of
an earlier table whose run folders are gone, and adds the new ones after
them; a kept row that a folder gives again is replaced by it, in place).
Writes retrieval.md/.csv.
"""

import json
import os

from absl import app, flags
from genrec import gin_utils, tables
from genrec.retrieval import corpus
from genrec.retrieval import run as retrieval_run

flags.DEFINE_string('collection', 'cranfield', 'Collection folder under the data dir.')
flags.DEFINE_string('data_dir', None, 'Data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('split', 'test', 'qrels split to evaluate.')
flags.DEFINE_integer('vocab_size', 8000, 'SentencePiece vocabulary size (upper bound).')
flags.DEFINE_string('output_dir', 'runs/retrieval', 'Where the vocabulary, runs and tables go.')
flags.DEFINE_list('methods', list(retrieval_run.METHODS), 'Rows of the table.')
flags.DEFINE_multi_string('gin_file', ['gin/retrieval/cranfield.gin'],
                          'Model size and training budget of the generative methods.')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
flags.DEFINE_bool('table_only', False, 'Only re-tabulate the rows saved in output_dir.')
flags.DEFINE_list('table_from', None, 'With --table_only: the run folders whose rows go in '
                  'the table, in order (default output_dir).')
flags.DEFINE_string('table_dir', None, 'With --table_only: where the table goes (default '
                    'output_dir), e.g. docs/results.')
flags.DEFINE_string('table_keep', None, 'With --table_only: the CSV of an earlier table (e.g. '
                    'the committed docs/results one) whose rows come first, as written; for '
                    'rows whose run folders are gone.')
flags.DEFINE_list('compare', None, 'Two run folders BASE,OTHER of one collection: prints each '
                  'method\'s nDCG@10 in both and the paired test\'s p-value (e.g. with '
                  'pseudo-queries against without); nothing is trained.')
flags.DEFINE_string('table_stem', 'retrieval', 'With --table_only: the table\'s file name '
                    '(<stem>.md and .csv).')
FLAGS = flags.FLAGS


def _drop_repeated_bm25(rows: list[dict]) -> list[dict]:
  """Rows without the BM25 rows that repeat an earlier one's figures (each
  run folder of a table has its own BM25 row, measured on the same tokens)."""
  seen, out = set(), []
  for r in rows:
    if r['method'].startswith('BM25'):
      key = (r['method'], r.get('tokens'), r.get('queries'),
             tuple(r.get(k) for k in retrieval_run.COLUMNS[1:7]))
      if key in seen:
        continue
      seen.add(key)
    out.append(r)
  return out


def _replace_kept(kept: list[dict], fresh: list[dict]) -> list[dict]:
  """The kept rows, each replaced in place by the fresh row of the same
  method and run (command; for a hybrid, its generative row's: a later
  invocation may fuse it again; a dev-tuned hybrid whatever alpha the dev
  queries chose: a rerun may tune another), then the other fresh rows: a
  table regenerated from the same folders lists each row once."""
  key = lambda r: (retrieval_run.TUNED_ALPHA.sub('alpha', r['method']),  # noqa: E731
                   retrieval_run.run_command(r))
  again = {key(r): r for r in fresh}
  out = [again.pop(key(r), r) for r in kept]
  return out + [r for r in fresh if key(r) in again]


def main(argv):
  del argv
  unknown = set(FLAGS.methods) - set(retrieval_run.METHODS)
  if unknown:
    raise app.UsageError(f'Unknown methods {sorted(unknown)}; choose from '
                         f'{", ".join(retrieval_run.METHODS)}.')
  if FLAGS.compare:
    if len(FLAGS.compare) != 2:
      raise app.UsageError(f'--compare takes two run folders BASE,OTHER, got {FLAGS.compare}.')
    qrels = corpus.load_beir(FLAGS.collection, FLAGS.data_dir).qrels[FLAGS.split]
    rows = retrieval_run.compare_runs(*FLAGS.compare, qrels, FLAGS.split)
    if not rows:
      raise app.UsageError(f'No method has a {FLAGS.split}.trec in both {FLAGS.compare}.')
    print(f'{FLAGS.collection}, {FLAGS.split} queries: base {FLAGS.compare[0]}, other '
          f'{FLAGS.compare[1]}; p: paired randomization test on per-query nDCG@10\n\n' +
          tables.markdown(rows))
    return
  if FLAGS.table_only:
    paths = [(d, retrieval_run.row_path(d, m)) for d in (FLAGS.table_from or [FLAGS.output_dir])
             for m in FLAGS.methods]
    kept = tables.read_csv(FLAGS.table_keep, 'method') if FLAGS.table_keep else []
    fresh, qrels = [], None
    for d, p in paths:
      if not os.path.exists(p):
        continue
      with open(p) as f:
        saved = json.load(f)
      for row in saved if isinstance(saved, list) else [saved]:  # hybrid/: a list of rows
        if retrieval_run.p_vs_bm25_files(d, row, FLAGS.split):
          # Rows saved before p_vs_bm25: the test from their folder's run files.
          qrels = qrels or corpus.load_beir(FLAGS.collection, FLAGS.data_dir).qrels[FLAGS.split]
          row = retrieval_run.with_p_vs_bm25(d, row, qrels, FLAGS.split)
        fresh.append(row)
    rows = _drop_repeated_bm25(_replace_kept(kept, fresh))
    print(retrieval_run.write_table(rows, FLAGS.table_dir or FLAGS.output_dir,
                                    f'{FLAGS.collection}, {FLAGS.split} queries',
                                    FLAGS.table_stem))
    return
  gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings)
  retrieval_run.run(FLAGS.output_dir, FLAGS.collection, FLAGS.data_dir, FLAGS.split,
                    FLAGS.vocab_size, FLAGS.methods)


if __name__ == '__main__':
  app.run(main)
