r"""FM-index build cost and query latency by corpus size.

  python -m genrec.benchmarks.fm_index --sizes=1000000,10000000,100000000 \
    --output_dir=runs/fm_index

Synthetic token streams (Zipf-distributed tokens over --vocab, documents of
50-300 tokens) of each size are indexed; reported: build time and index
memory per million tokens, peak host memory, and the median and p99 latency
of count, next_tokens and locate for --queries n-grams (1-4 tokens) drawn
from the corpus. Writes fm_index.md and fm_index.csv.
"""

import resource
import time

from absl import app, flags
import numpy as np

from genrec import tables
from genrec.fm_index import FMIndex

flags.DEFINE_list('sizes', ['1000000', '10000000', '100000000'], 'Corpus tokens.')
flags.DEFINE_integer('vocab', 32000, 'Vocabulary size.')
flags.DEFINE_integer('queries', 2000, 'Timed queries per operation.')
flags.DEFINE_string('output_dir', None, 'Where fm_index.md/.csv go (default: print only).')
FLAGS = flags.FLAGS


def synthetic_corpus(num_tokens: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, vocab)
  p = 1.0 / ranks
  tokens = rng.choice(ranks, size=num_tokens, p=p / p.sum()).astype(np.int32)
  cuts = np.cumsum(rng.integers(50, 301, num_tokens // 50 + 1))
  cuts = cuts[cuts < num_tokens]
  return np.split(tokens, cuts)


def _latency(fn, grams) -> tuple[float, float]:
  times = []
  for g in grams:
    t0 = time.perf_counter()
    fn(g)
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e6), float(np.percentile(times, 99) * 1e6)


def bench(num_tokens: int, vocab: int, queries: int) -> dict:
  docs = synthetic_corpus(num_tokens, vocab)
  t0 = time.perf_counter()
  index = FMIndex.build(docs, vocab)
  build_s = time.perf_counter() - t0
  rng = np.random.default_rng(1)
  grams = []
  for _ in range(queries):
    doc = docs[rng.integers(len(docs))]
    i = rng.integers(len(doc))
    grams.append(doc[i:i + rng.integers(1, 5)].tolist())
  row = {'tokens': index.num_tokens, 'docs': index.num_docs, 'vocab': vocab,
         'build_s': round(build_s, 2),
         'build_s_per_M_tokens': round(build_s / (index.num_tokens / 1e6), 3),
         'index_MiB': round(index.memory_bytes() / 2**20, 1),
         'index_bytes_per_token': round(index.memory_bytes() / index.num_tokens, 1),
         'peak_rss_MiB': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  for name, fn in (('count', index.count), ('next_tokens', index.next_tokens),
                   ('locate', lambda g: index.locate(g, limit=1000))):
    med, p99 = _latency(fn, grams)
    row |= {f'{name}_median_us': round(med, 1), f'{name}_p99_us': round(p99, 1)}
  print(row, flush=True)
  return row


def main(argv):
  del argv
  rows = []
  for n in FLAGS.sizes:
    rows.append(bench(int(n), FLAGS.vocab, FLAGS.queries))
    md = tables.markdown(rows)
    if FLAGS.output_dir:
      tables.write(md, rows, FLAGS.output_dir, 'fm_index')
  print(md, flush=True)


if __name__ == '__main__':
  app.run(main)
