"""The ranking run mode: Semantic-ID embeddings in a ranking model, item
representations x table sizes (`python main.py --gin_file=gin/runs/ranking.gin
--workdir=...`).

Trains `genrec.ranking.ranker`'s model once per (data set, table size, item
representation), every representation under the same embedding-table budget,
and evaluates AUC / log loss / Recall@10 overall, on cold-start items (held
out of training) and on head / tail items. Writes <workdir>/sid_ranking.md,
.csv and .png (AUC vs table size per variant, overall and cold-start); each
run's row is also <workdir>/<dataset>/<variant>_<rows>/row.json. A run folder
with a final checkpoint is evaluated without training again.
"""

import json
import os
import time
from collections.abc import Sequence

from absl import logging
import gin
import jax

from genrec import tables
from genrec.ranking import ranker, sid_features

COLUMNS = ('dataset', 'variant', 'table_rows', 'all/auc', 'cold/auc', 'tail/auc', 'head/auc',
           'all/logloss', 'cold/logloss', 'tail/logloss', 'all/recall@10', 'cold/recall@10',
           'tail/recall@10', 'rows_used', 'keys_per_item', 'train_s')


def run_dir(workdir: str, dataset: str, variant: str, rows: int) -> str:
  return os.path.join(workdir, os.path.basename(os.path.normpath(dataset)), f'{variant}_{rows}')


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


def write_table(rows: list[dict], workdir: str, plot: bool = True) -> str:
  """Writes <workdir>/sid_ranking.md/.csv/.png (process 0); returns the markdown."""
  md = '## Ranking with Semantic-ID embeddings (AUC / log loss / Recall@10 of 1 + 99)\n\n'
  md += tables.markdown(rows, COLUMNS)
  if jax.process_index() == 0 and rows:
    tables.write(md, rows, workdir, 'sid_ranking')
    if plot:
      _plot(rows, os.path.join(workdir, 'sid_ranking.png'))
  return md


def run(workdir: str, datasets: Sequence[str] = ('beauty', 'sports'),
        variants: Sequence[str] = sid_features.VARIANTS,
        table_rows: Sequence[int] = (1000, 4000, 16000), data_dir: str | None = None,
        plot: bool = True) -> list[dict]:
  """Trains and evaluates every (data set, table size, variant); returns the rows.

  Args:
    workdir: where the runs and the table go.
    datasets: data sets (`genrec.data.sequences.load_dataset` names or folders).
    variants: item representations, from `sid_features.VARIANTS`.
    table_rows: embedding-table sizes (rows).
    data_dir: the data dir (default $GENREC_DATA_DIR).
    plot: also write the AUC plot (needs matplotlib).
  """
  unknown = set(variants) - set(sid_features.VARIANTS)
  if unknown:
    raise ValueError(f'Unknown ranking variants {sorted(unknown)}; use {sid_features.VARIANTS}.')
  runs = [(d, int(r), v) for d in datasets for r in table_rows for v in variants]
  rows, cache, t0 = [], {}, time.time()
  for i, (d, r, v) in enumerate(runs):
    logging.info('[%d/%d] %s %s %d rows (elapsed %.0fs)', i + 1, len(runs), d, v, r,
                 time.time() - t0)
    folder = run_dir(workdir, d, v, r)
    row = ranker.train_and_evaluate(v, r, folder, dataset=d, data_dir=data_dir,
                                    data_cache=cache)
    if jax.process_index() == 0:
      with open(os.path.join(folder, 'row.json'), 'w') as f:
        json.dump(row, f, indent=1)
    rows.append(row)
    if d != runs[min(i + 1, len(runs) - 1)][0]:
      cache.clear()  # the next data set
    md = write_table(rows, workdir, plot)
  if jax.process_index() == 0:
    print(md, flush=True)
    with open(os.path.join(workdir, 'config.gin'), 'w') as f:
      f.write(gin.operative_config_str())
  return rows
