r"""FM-index build cost and query latency by corpus size.

  python -m genrec.benchmarks.fm_index --sizes=1000000,10000000,100000000 \
    --output_dir=runs/fm_index

Synthetic token streams (Zipf-distributed tokens over --vocab, documents of
50-300 tokens) of each size are indexed; reported: build time and index
memory per million tokens, peak host memory, and the median and p99 latency
of count, next_tokens and locate for --queries n-grams (1-4 tokens) drawn
from the corpus. Writes fm_index.md and fm_index.csv.

With `--seal_dir` (a SEAL serving directory, `gin/runs/export_retriever.gin`)
it also replays SEAL retrieval over the collection's queries in batches of
`--seal_batch` and reports the host constraint's ms per query (the FM-index
lookups between decoding steps), the whole retrieval's, and a digest of the
documents returned (equal digests: same answers). Writes seal_constraint.md/.csv.

  python -m genrec.benchmarks.fm_index --sizes= --seal_dir=runs/seal/serving
"""

import hashlib
import json
import os
import resource
import sys
import time

from absl import app, flags
import numpy as np

from genrec import fm_index, tables
from genrec.fm_index import FMIndex

flags.DEFINE_list('sizes', ['1000000', '10000000', '100000000'], 'Corpus tokens.')
flags.DEFINE_integer('vocab', 32000, 'Vocabulary size.')
flags.DEFINE_integer('queries', 2000, 'Timed queries per operation.')
flags.DEFINE_string('output_dir', None, 'Where fm_index.md/.csv go (default: print only).')
flags.DEFINE_string('seal_dir', None, 'A SEAL serving directory: also time its host '
                    'constraint over the collection\'s queries.')
flags.DEFINE_string('seal_queries', None, 'BEIR queries.jsonl for --seal_dir (default '
                    '$GENREC_DATA_DIR/<the collection>/queries.jsonl).')
flags.DEFINE_integer('seal_batch', 16, 'Queries per retrieval call for --seal_dir.')
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
  row.update(machine=tables.host_summary(), date=time.strftime('%Y-%m-%d'),
             commit=tables.source_commit(), command='python -m genrec.benchmarks.fm_index ' + ' '.join(sys.argv[1:]))
  print(row, flush=True)
  return row


def seal_constraint(directory: str, queries_file: str | None, batch_size: int) -> dict:
  """Replays SEAL retrieval over a collection's queries (see the module doc)."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  from genrec import seal  # pylint: disable=g-import-not-at-top
  from genrec.artifact import Artifact  # pylint: disable=g-import-not-at-top
  art = Artifact(directory)
  m = art.manifest
  path = queries_file or os.path.join(os.environ.get('GENREC_DATA_DIR', ''), m['collection'],
                                      'queries.jsonl')
  with open(path) as f:
    texts = [json.loads(line)['text'] for line in f if line.strip()]
  sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, m['tokenizer']))
  rows = np.zeros((len(texts), m['input_len']), np.int32)
  for i, t in enumerate(texts):
    tokens = sp.encode(t)[:m['input_len']]
    rows[i, :len(tokens)] = tokens
  retriever = seal.SealRetriever(art)
  made = []

  class Timed(fm_index.NGramConstraint):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)
  retriever(rows[:batch_size])  # compiles; not timed
  real, fm_index.NGramConstraint = fm_index.NGramConstraint, Timed
  try:
    digest, t0 = hashlib.sha1(), time.perf_counter()
    for start in range(0, len(rows), batch_size):
      docs, _ = retriever(rows[start:start + batch_size])
      digest.update(docs.tobytes())
    total = time.perf_counter() - t0
  finally:
    fm_index.NGramConstraint = real
  n = len(rows)
  return {'collection': m['collection'], 'queries': n, 'batch': batch_size,
          'beam_size': m['beam_size'], 'ngram_len': m['ngram_len'],
          'constraint_ms_per_query': round(sum(c.seconds for c in made) / n * 1e3, 2),
          'total_ms_per_query': round(total / n * 1e3, 2),
          'documents_sha1': digest.hexdigest()[:12]}


def main(argv):
  del argv
  rows = []
  for n in FLAGS.sizes:
    rows.append(bench(int(n), FLAGS.vocab, FLAGS.queries))
    md = tables.markdown(rows)
    if FLAGS.output_dir:
      tables.write(md, rows, FLAGS.output_dir, 'fm_index')
    print(md, flush=True)
  if FLAGS.seal_dir:
    row = seal_constraint(FLAGS.seal_dir, FLAGS.seal_queries, FLAGS.seal_batch)
    row.update(machine=tables.host_summary(), date=time.strftime('%Y-%m-%d'),
               commit=tables.source_commit(), command='python -m genrec.benchmarks.fm_index ' + ' '.join(sys.argv[1:]))
    md = tables.markdown([row])
    if FLAGS.output_dir:
      tables.write(md, [row], FLAGS.output_dir, 'seal_constraint')
    print(md, flush=True)


if __name__ == '__main__':
  app.run(main)
