r"""Identifier quality per data set and scheme.

  python -m genrec.benchmarks.id_quality --data_dir=../shared/data \
      --datasets=beauty,sports,toys,synthetic --output_dir=runs/id_quality

For every scheme: levels and codebook sizes, items colliding before and after
the collision level, per-level codebook utilization (used codes / size and
the perplexity of code usage), RQ-VAE reconstruction error, fit time. Prints
one markdown table per data set and writes id_quality.md and id_quality.csv.
"""

import os
import time

from absl import app, flags, logging
import numpy as np

from genrec import ids, sequences
from genrec.benchmarks import tables

flags.DEFINE_string('data_dir', None, 'Folder holding amazon-2014/ (default $GENREC_DATA_DIR).')
flags.DEFINE_list('datasets', ['beauty', 'sports', 'toys', 'synthetic'], 'Data sets.')
flags.DEFINE_list('schemes', ['atomic', 'random', 'sequential', 'collaborative', 'hkmeans',
                              'rqkmeans', 'rqkmeans_sinkhorn', 'rqvae', 'lcrec'],
                  'Schemes to fit (lcrec only where the data set ships its file).')
flags.DEFINE_integer('rqvae_steps', 3000, 'RQ-VAE training steps.')
flags.DEFINE_string('output_dir', None, 'Where to write id_quality.md/.csv.')
FLAGS = flags.FLAGS


def make_schemes(names, data_dir: str | None, dataset: str, rqvae_steps: int) -> dict:
  """Scheme name -> IdScheme, at the settings of the papers."""
  lcrec = os.path.join('amazon-2014', dataset, 'lcrec_index.json')
  table = {
      'atomic': lambda: ids.AtomicIds(),
      'random': lambda: ids.RandomCodeIds(num_levels=2),
      'sequential': lambda: ids.SequentialIds(num_levels=2),
      'collaborative': lambda: ids.CollaborativeIds(num_levels=3, branching=32),
      'hkmeans': lambda: ids.HierarchicalKMeansIds(num_levels=2, branching=32),
      'rqkmeans': lambda: ids.ResidualKMeansIds(num_levels=3, codebook_size=256),
      'rqkmeans_sinkhorn': lambda: ids.ResidualKMeansIds(num_levels=3, codebook_size=256,
                                                         sinkhorn_last_level=True),
      'rqvae': lambda: ids.RQVAEIds(num_levels=3, codebook_size=256, num_steps=rqvae_steps),
      'lcrec': lambda: ids.PrecomputedIds(path=lcrec, data_dir=data_dir),
  }
  unknown = set(names) - set(table)
  if unknown:
    raise ValueError(f'Unknown schemes {sorted(unknown)}; choose from {sorted(table)}.')
  out = {}
  for name in names:
    if name == 'lcrec':
      root = data_dir or os.environ.get(sequences.DATA_DIR_ENV) or ''
      if dataset == 'synthetic' or not os.path.exists(os.path.join(root, lcrec)):
        continue
    out[name] = table[name]()
  return out


def code_usage(codes: np.ndarray, size: int) -> tuple[int, float]:
  """(distinct codes used, perplexity = exp(entropy) of the usage distribution)."""
  counts = np.bincount(codes, minlength=size).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return int((counts > 0).sum()), float(np.exp(-(p * np.log(p)).sum()))


def quality_row(dataset: str, name: str, item_ids: ids.ItemIds, seconds: float) -> dict:
  usage = []
  for level, size in enumerate(item_ids.level_sizes):
    used, ppl = code_usage(item_ids.codes[1:, level], size)
    usage.append(f'{used}/{size} (ppl {ppl:.0f})')
  info = item_ids.info
  return {
      'dataset': dataset, 'scheme': name, 'levels': item_ids.num_levels,
      'collisions_before': info.get('collisions_before_dedup', item_ids.num_collisions),
      'collisions_after': item_ids.num_collisions,
      'utilization_per_level': '; '.join(usage),
      'rqvae_recon_mse': (f"{info['reconstruction_mse']:.4f}"
                          if 'reconstruction_mse' in info else ''),
      'fit_seconds': round(seconds, 1),
  }


def main(argv):
  del argv
  rows = []
  for dataset in FLAGS.datasets:
    data = sequences.load_dataset(dataset, FLAGS.data_dir)
    for name, scheme in make_schemes(FLAGS.schemes, FLAGS.data_dir, dataset,
                                     FLAGS.rqvae_steps).items():
      t0 = time.time()
      item_ids = scheme.fit(data)
      rows.append(quality_row(dataset, name, item_ids, time.time() - t0))
      logging.info('%s / %s: %s', dataset, name, rows[-1])
  md = tables.markdown(rows) if rows else '(no rows)'
  print(md, flush=True)
  if FLAGS.output_dir:
    tables.write(md, rows, FLAGS.output_dir, 'id_quality')


if __name__ == '__main__':
  app.run(main)
