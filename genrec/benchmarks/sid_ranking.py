r"""Semantic-ID embeddings in a ranking model: variants x table sizes.

  python -m genrec.benchmarks.sid_ranking --data_dir=../shared/data \
      --output_dir=runs/sid_ranking [--datasets=beauty,sports] \
      [--table_rows=1000,4000,16000] [--variants=random,sid_unigram,...] \
      [--gin_file=gin/ranking/sid_ranking.gin] [--gin_bindings=...]

Trains `genrec.ranking`'s model once per (data set, table size, item
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
import time

from absl import app, flags, logging
import gin

from genrec import ranking, sid_features
from genrec.benchmarks import tables

flags.DEFINE_list('datasets', ['beauty', 'sports'], 'Amazon 2014 sets.')
flags.DEFINE_list('variants', list(sid_features.VARIANTS), 'Item representations.')
flags.DEFINE_list('table_rows', ['1000', '4000', '16000'], 'Embedding-table sizes (rows).')
flags.DEFINE_string('data_dir', None, 'Data dir (default $GENREC_DATA_DIR).')
flags.DEFINE_string('output_dir', 'runs/sid_ranking', 'Where runs and tables go.')
flags.DEFINE_multi_string('gin_file', ['gin/ranking/sid_ranking.gin'], 'Training settings.')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
flags.DEFINE_bool('table_only', False, 'Only re-tabulate the saved rows.')
FLAGS = flags.FLAGS

COLUMNS = ('dataset', 'variant', 'table_rows', 'all/auc', 'cold/auc', 'tail/auc', 'head/auc',
           'all/logloss', 'cold/logloss', 'tail/logloss', 'all/recall@10', 'cold/recall@10',
           'tail/recall@10', 'rows_used', 'keys_per_item', 'train_s')


def _run_dir(dataset: str, variant: str, rows: int) -> str:
  return os.path.join(FLAGS.output_dir, dataset, f'{variant}_{rows}')


def _plot(rows: list[dict], path: str) -> None:
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    logging.warning('matplotlib is not installed: no plot (pip install matplotlib).')
    return
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.6 * len(datasets)), squeeze=False)
  for i, ds in enumerate(datasets):
    for j, metric in enumerate(('all/auc', 'cold/auc')):
      ax = axes[i][j]
      for v in dict.fromkeys(r['variant'] for r in rows):
        pts = sorted((r['table_rows'], r[metric]) for r in rows
                     if r['dataset'] == ds and r['variant'] == v)
        ax.plot(*zip(*pts), marker='o', label=v)
      ax.set_xscale('log')
      ax.set_xlabel('embedding-table rows')
      ax.set_ylabel(f'AUC ({"all users" if j == 0 else "cold-start items"})')
      ax.set_title(ds)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _write(rows: list[dict]) -> None:
  md = '## Ranking with Semantic-ID embeddings (AUC / log loss / Recall@10 of 1 + 99)\n\n'
  md += tables.markdown(rows, COLUMNS)
  print(md, flush=True)
  tables.write(md, rows, FLAGS.output_dir, 'sid_ranking')
  _plot(rows, os.path.join(FLAGS.output_dir, 'sid_ranking.png'))


def main(argv):
  del argv
  unknown = set(FLAGS.variants) - set(sid_features.VARIANTS)
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}; use {sid_features.VARIANTS}.')
  sizes = [int(r) for r in FLAGS.table_rows]
  runs = [(d, r, v) for d in FLAGS.datasets for r in sizes for v in FLAGS.variants]
  if FLAGS.table_only:
    rows = []
    for d, r, v in runs:
      path = os.path.join(_run_dir(d, v, r), 'row.json')
      if os.path.exists(path):
        with open(path) as f:
          rows.append(json.load(f))
    _write(rows)
    return
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  rows, cache, t0 = [], {}, time.time()
  for i, (d, r, v) in enumerate(runs):
    logging.info('[%d/%d] %s %s %d rows (elapsed %.0fs)', i + 1, len(runs), d, v, r,
                 time.time() - t0)
    row = ranking.train_and_evaluate(v, r, _run_dir(d, v, r), dataset=d,
                                     data_dir=FLAGS.data_dir, data_cache=cache)
    with open(os.path.join(_run_dir(d, v, r), 'row.json'), 'w') as f:
      json.dump(row, f, indent=1)
    rows.append(row)
    if d != runs[min(i + 1, len(runs) - 1)][0]:
      cache.clear()  # the next data set
    _write(rows)
  with open(os.path.join(FLAGS.output_dir, 'config.gin'), 'w') as f:
    f.write(gin.operative_config_str())


if __name__ == '__main__':
  app.run(main)
