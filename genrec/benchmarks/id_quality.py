r"""Identifier quality per data set and scheme.

  python -m genrec.benchmarks.id_quality --data_dir=../shared/data \
      --datasets=beauty,sports,toys,synthetic --output_dir=runs/id_quality

For every scheme: the item content it clusters (`--content`: 'auto' = text
where the data set has item text, else attributes; 'text' = MiniLM over
"title; brand; categories"; 'attributes' = TF-IDF of attribute ids; content-
based schemes get one row per content), levels and codebook sizes, items colliding before and after
the collision level, per-level codebook utilization (used codes / size and
the perplexity of code usage), RQ-VAE reconstruction error, fit time. Prints
one markdown table per data set and writes id_quality.md and id_quality.csv.
"""

import os
import time

from absl import app, flags, logging
import numpy as np

from genrec import ids, tables
from genrec.data import sequences
from genrec.ids import content as item_content

CONTENT_FNS = {'auto': item_content.item_content, 'text': item_content.text_embeddings,
               'attributes': item_content.attribute_tfidf}
LONG_IDS = {'pq32': (32, 0), 'opq8': (8, 4), 'opq16': (16, 4), 'opq32': (32, 4),
            'opq64': (64, 4)}  # name -> (codes per item, OPQ rotation updates)
CONTENT_SCHEMES = ('hkmeans', 'rqkmeans', 'rqkmeans_sinkhorn', 'rqvae', *LONG_IDS)

flags.DEFINE_string('data_dir', None, 'Folder holding amazon-2014/ (default $GENREC_DATA_DIR).')
flags.DEFINE_list('datasets', ['beauty', 'sports', 'toys', 'synthetic'], 'Data sets.')
flags.DEFINE_list('schemes', ['atomic', 'random', 'sequential', 'collaborative', 'hkmeans',
                              'rqkmeans', 'rqkmeans_sinkhorn', 'rqvae', 'lcrec'],
                  'Schemes to fit (lcrec only where the data set ships its file).')
flags.DEFINE_integer('rqvae_steps', 3000, 'RQ-VAE training steps.')
flags.DEFINE_list('content', ['auto'], 'Item content of the content-based schemes: auto, '
                  'text, attributes (one row each).')
flags.DEFINE_string('output_dir', None, 'Where to write id_quality.md/.csv.')
FLAGS = flags.FLAGS


def make_schemes(names, data_dir: str | None, dataset: str, rqvae_steps: int,
                 content_fn=item_content.item_content) -> dict:
  """Scheme name -> IdScheme, at the settings of the papers (content-based
  ones clustering `content_fn(data)`)."""
  lcrec = os.path.join('amazon-2014', dataset, 'lcrec_index.json')
  c = content_fn
  table = {
      'atomic': lambda: ids.AtomicIds(),
      'random': lambda: ids.RandomCodeIds(num_levels=2),
      'sequential': lambda: ids.SequentialIds(num_levels=2),
      'collaborative': lambda: ids.CollaborativeIds(num_levels=3, branching=32),
      'hkmeans': lambda: ids.HierarchicalKMeansIds(num_levels=2, branching=32, content_fn=c),
      'rqkmeans': lambda: ids.ResidualKMeansIds(num_levels=3, codebook_size=256, content_fn=c),
      'rqkmeans_sinkhorn': lambda: ids.ResidualKMeansIds(
          num_levels=3, codebook_size=256, sinkhorn_last_level=True, content_fn=c),
      'rqvae': lambda: ids.RQVAEIds(num_levels=3, codebook_size=256, num_steps=rqvae_steps,
                                    content_fn=c),
      'lcrec': lambda: ids.PrecomputedIds(path=lcrec, data_dir=data_dir),
      **{name: (lambda m=m, it=it: ids.ProductQuantizationIds(
          num_levels=m, codebook_size=256, opq_iters=it, content_fn=c))
         for name, (m, it) in LONG_IDS.items()},
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


def quality_row(dataset: str, name: str, item_ids: ids.ItemIds, seconds: float,
                content: str = '') -> dict:
  usage = []
  for level, size in enumerate(item_ids.level_sizes):
    used, ppl = code_usage(item_ids.codes[1:, level], size)
    usage.append((used, size, ppl))
  info = item_ids.info
  if len(usage) > 6:  # long IDs: the range over the code levels, then the collision level
    body = usage[:-1] if item_ids.info.get('collision_level') else usage
    used, ppl = [u for u, _, _ in body], [p for _, _, p in body]
    text = (f'{len(body)} levels: used {min(used)}-{max(used)} of {body[0][1]}, '
            f'ppl {min(ppl):.0f}-{max(ppl):.0f}')
    if len(body) < len(usage):
      u, size, p = usage[-1]
      text += f'; collision level {u}/{size} (ppl {p:.0f})'
  else:
    text = '; '.join(f'{u}/{size} (ppl {p:.0f})' for u, size, p in usage)
  return {
      'dataset': dataset, 'scheme': name, 'content': content, 'levels': item_ids.num_levels,
      'collisions_before': info.get('collisions_before_dedup', item_ids.num_collisions),
      'collisions_after': item_ids.num_collisions,
      'utilization_per_level': text,
      'rqvae_recon_mse': (f"{info['reconstruction_mse']:.4f}"
                          if 'reconstruction_mse' in info else ''),
      # Product quantization: the squared error left, as a share of the content's variance.
      'pq_relative_mse': (f"{info['quantization_mse'] / info['content_variance']:.3f}"
                          if 'quantization_mse' in info else ''),
      'fit_seconds': round(seconds, 1),
      'machine': tables.host_summary(), 'date': time.strftime('%Y-%m-%d'),
      'commit': tables.source_commit(), 'command': tables.command_line(),
  }


def main(argv):
  del argv
  unknown = set(FLAGS.content) - set(CONTENT_FNS)
  if unknown:
    raise app.UsageError(f'Unknown --content {sorted(unknown)}; use {sorted(CONTENT_FNS)}.')
  rows = []
  for dataset in FLAGS.datasets:
    data = sequences.load_dataset(dataset, FLAGS.data_dir)
    has_text = data.item_text is not None
    for i, mode in enumerate(FLAGS.content):
      if mode == 'text' and not has_text:
        logging.warning('%s has no item text: no text rows.', dataset)
        continue
      resolved = {'auto': 'text' if has_text else 'attributes'}.get(mode, mode)
      names = [n for n in FLAGS.schemes if n in CONTENT_SCHEMES or i == 0]
      for name, scheme in make_schemes(names, FLAGS.data_dir, dataset, FLAGS.rqvae_steps,
                                       CONTENT_FNS[mode]).items():
        t0 = time.time()
        item_ids = scheme.fit(data)
        rows.append(quality_row(dataset, name, item_ids, time.time() - t0,
                                resolved if name in CONTENT_SCHEMES else ''))
        logging.info('%s / %s: %s', dataset, name, rows[-1])
  md = tables.markdown(rows) if rows else '(no rows)'
  print(md, flush=True)
  if FLAGS.output_dir:
    tables.write(md, rows, FLAGS.output_dir, 'id_quality')


if __name__ == '__main__':
  app.run(main)
