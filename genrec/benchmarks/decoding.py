r"""Beam-search throughput and latency, constrained vs free, by catalog size.

  python -m genrec.benchmarks.decoding --output_dir=runs/decoding

For every catalog size (synthetic semantic IDs: 3 levels x 256 codes drawn at
random plus TIGER's collision level, i.e. the shape of RQ-VAE IDs) it builds
the prefix trie (build time, memory) and times `Trainer.predict` of a model
(--gin_file, default the `tiger` size, random weights: speed does not depend
on them) for every beam size, with and without the trie: queries/s at
--batch_size, and the latency of one query (--latency_batch). Medians of
--reps timed calls after a compiled warm-up; `vs_free_beam` is the throughput
ratio to free beam search from the same run. With --projection, the same
model with an item projection head ranks the catalog in one pass (top-k).
Writes decoding.md and decoding.csv.
"""

import dataclasses
import os
import time

from absl import app, flags
import gin
import jax
import numpy as np
import optax

from genrec import constraints, models, partitioning, tables, trainer
from genrec.ids import ItemIds
from genrec.ids.kmeans import add_collision_level

flags.DEFINE_list('catalog_sizes', ['12000', '100000', '1000000'], 'Items per catalog.')
flags.DEFINE_list('beams', ['10', '20', '50'], 'Beam sizes.')
flags.DEFINE_integer('batch_size', 256, 'Queries per call for the throughput figure.')
flags.DEFINE_integer('latency_batch', 1, 'Queries per call for the latency figure (0: skip).')
flags.DEFINE_integer('history', 20, 'History items per query (x levels = encoder tokens).')
flags.DEFINE_integer('reps', 5, 'Timed calls per setting (median reported).')
flags.DEFINE_integer('codebook_size', 256, 'Codes per level.')
flags.DEFINE_integer('levels', 3, 'Levels before the collision level.')
flags.DEFINE_bool('projection', True, 'Also time the projection head (top-k over every '
                  'item in one pass) on the same queries.')
flags.DEFINE_multi_string('gin_file', ['gin/models/tiger.gin'], 'Model-size gin files.')
flags.DEFINE_string('output_dir', None, 'Where decoding.md/.csv go (default: print only).')
FLAGS = flags.FLAGS

def synthetic_ids(num_items: int, levels: int, codebook_size: int, seed: int = 0) -> ItemIds:
  """Random semantic IDs made unique by a collision level."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, (num_items + 1, levels))
  codes, sizes = add_collision_level(codes, (codebook_size,) * levels)
  return ItemIds(codes, sizes, f'synthetic-{levels}x{codebook_size}')


def _time(fn, reps: int) -> float:
  jax.block_until_ready(fn())  # compile + warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_catalog(model_config: models.EncoderDecoderConfig, num_items: int, beams: list[int],
                  batch_size: int, latency_batch: int, history: int, reps: int, levels: int,
                  codebook_size: int, projection: bool = True) -> list[dict]:
  """Rows of one catalog: for each k, free beam search, trie-constrained beam
  search and (optionally) the projection head's top-k."""
  ids = synthetic_ids(num_items, levels, codebook_size)
  t0 = time.perf_counter()
  trie = constraints.PrefixTrie.from_ids(ids)
  jax.block_until_ready(trie)
  build_s = time.perf_counter() - t0
  config = dataclasses.replace(model_config, vocab_size=ids.vocab_size)
  mesh = partitioning.make_mesh(-1, 1, 1)
  tr = trainer.Trainer(config, optax.sgd(0.0), mesh)
  params = tr.init_state(0).params
  head_tr = head_params = None
  if projection:
    head_tr = trainer.Trainer(models.ProjectionConfig(**dataclasses.asdict(config),
                                                      num_items=num_items),
                              optax.sgd(0.0), mesh)
    head_params = head_tr.init_state(0).params
  rng = np.random.default_rng(1)
  table = ids.token_table()
  dp = partitioning.data_parallel_size(mesh)
  queries = {}
  for name, batch in (('batch', batch_size), ('latency', latency_batch)):
    if batch:
      batch = -(-batch // dp) * dp
      items = rng.integers(1, num_items + 1, (batch, history))
      queries[name] = partitioning.shard_batch(
          {'x': table[items].reshape(batch, -1).astype(np.int32)}, mesh)['x']
  rows = []
  for beam in beams:
    for mode in ('beam', 'beam+trie') + (('projection',) if projection else ()):
      row = {'device': partitioning.device_summary(),
             'items': num_items, 'levels': ids.num_levels, 'vocab': ids.vocab_size,
             'trie_MiB': round(trie.memory_bytes() / 2**20, 2),
             'trie_build_s': round(build_s, 2), 'k': beam, 'mode': mode}
      for name, x in queries.items():
        if mode == 'projection':
          fn = lambda: head_tr.rank_items(head_params, x, beam)
        else:
          fn = lambda: tr.predict(params, x, beam, ids.num_levels,
                                  trie if mode == 'beam+trie' else None)
        seconds = _time(fn, reps)
        if name == 'batch':
          found = (np.asarray(fn()) if mode == 'projection'
                   else ids.tokens_to_items(np.asarray(fn()[0])))
          row |= {'batch': len(x), 'batch_ms': round(seconds * 1e3, 2),
                  'queries_per_s': round(len(x) / seconds, 1),
                  'invalid_rate': round(float((found == 0).mean()), 4)}
        else:
          row['latency_ms_1_query'] = round(seconds * 1e3, 2)
      rows.append(row)
      print(row, flush=True)
  return rows


def with_ratios(rows: list[dict]) -> list[dict]:
  """Adds throughput ratios to free beam search (measured in the same run)."""
  free = {(r['items'], r['k']): r['queries_per_s'] for r in rows if r['mode'] == 'beam'}
  for r in rows:
    r['vs_free_beam'] = round(r['queries_per_s'] / free[(r['items'], r['k'])], 3)
  return rows


def main(argv):
  del argv
  gin.add_config_file_search_path(os.getcwd())
  gin.parse_config_files_and_bindings(FLAGS.gin_file, [])
  config = gin.get_configurable(models.EncoderDecoderConfig)()
  rows = []
  for n in FLAGS.catalog_sizes:
    rows += bench_catalog(config, int(n), [int(b) for b in FLAGS.beams], FLAGS.batch_size,
                          FLAGS.latency_batch, FLAGS.history, FLAGS.reps, FLAGS.levels,
                          FLAGS.codebook_size, FLAGS.projection)
    rows = with_ratios(rows)
    if FLAGS.output_dir:  # after every catalog, so a cut-short run keeps its figures
      tables.write(tables.markdown(rows), rows, FLAGS.output_dir, 'decoding')
  print(tables.markdown(rows), flush=True)


if __name__ == '__main__':
  app.run(main)
