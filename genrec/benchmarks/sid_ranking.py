r"""Semantic-ID embeddings in a ranking model: variants x table sizes; the same
as the ranking run mode (genrec/ranking/run.py) with flags.

  python -m genrec.benchmarks.sid_ranking --data_dir=../shared/data \
      --output_dir=runs/sid_ranking [--datasets=beauty,sports] \
      [--table_rows=1000,4000,16000] [--variants=random,sid_unigram,...] \
      [--gin_file=gin/ranking/sid_ranking.gin] [--gin_bindings=...]

Trains `genrec.ranking.ranker`'s model once per (data set, table size, item
representation), every representation under the same embedding-table budget,
and evaluates AUC / log loss / Recall@10 overall, on cold-start items (held
out of training) and on head / tail items. Writes sid_ranking.md/.csv and
sid_ranking.png (AUC vs table size per variant, overall and cold-start);
each run's row is also <output_dir>/<dataset>/<variant>_<rows>/row.json, and
`--table_only` re-tabulates them. A run folder with a final checkpoint is
evaluated without training again.
"""

import json
import os

from absl import app, flags
from genrec import gin_utils
from genrec.ranking import run as ranking_run, sid_features

flags.DEFINE_list('datasets', ['beauty', 'sports'], 'Amazon 2014 sets.')
flags.DEFINE_list('variants', list(sid_features.VARIANTS), 'Item representations.')
flags.DEFINE_list('table_rows', ['1000', '4000', '16000'], 'Embedding-table sizes (rows).')
flags.DEFINE_string('data_dir', None, 'Data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('output_dir', 'runs/sid_ranking', 'Where runs and tables go.')
flags.DEFINE_multi_string('gin_file', ['gin/ranking/sid_ranking.gin'], 'Training settings.')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
flags.DEFINE_bool('table_only', False, 'Only re-tabulate the saved rows.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  unknown = set(FLAGS.variants) - set(sid_features.VARIANTS)
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}; use {sid_features.VARIANTS}.')
  sizes = [int(r) for r in FLAGS.table_rows]
  if FLAGS.table_only:
    rows = []
    for d in FLAGS.datasets:
      for r in sizes:
        for v in FLAGS.variants:
          path = os.path.join(ranking_run.run_dir(FLAGS.output_dir, d, v, r), 'row.json')
          if os.path.exists(path):
            with open(path) as f:
              rows.append(json.load(f))
    print(ranking_run.write_table(rows, FLAGS.output_dir))
    return
  gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings)
  ranking_run.run(FLAGS.output_dir, FLAGS.datasets, FLAGS.variants, sizes, FLAGS.data_dir)


if __name__ == '__main__':
  app.run(main)
