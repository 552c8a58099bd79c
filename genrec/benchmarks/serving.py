r"""Load test of the server beside in-process inference of the same exported
artifact: a recommender (/v1/recommend, optionally two-stage with a ranker)
or a document retriever, DSI or SEAL (/v1/retrieve).

  python -m genrec.benchmarks.serving --artifact=runs/beauty/serving \
      --concurrency=1,8,32,128 --seconds=20 --output_dir=docs/results
  python -m genrec.benchmarks.serving --artifact=runs/retrieval/seal/serving \
      --queries=../shared/data/cranfield/queries.jsonl --output_dir=docs/results

Starts `genrec.serve` on loopback in its own process, then for
each concurrency level runs that many aiohttp clients (asyncio), each sending
one request after the other for `--seconds` (at most `--max_requests` in all),
with histories drawn from the artifact's catalog (1 to max_history items),
or a retriever's queries from `--queries` (BEIR queries.jsonl; default the
collection's under $GENREC_DATA_DIR), cycled.
With `--ranker` (a ranker exported from a run on the same data) the server
serves both and every request is two-stage (generate, then re-rank).
Reports QPS, p50/p95/p99 latency, errors and the server's RSS before and
after. Beside it, in the same run: the artifact's in-process queries/s at
`--batch_size` and its 1-query latency (median of `--repeats`), and the
server's load-to-first-answer time.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

from absl import app, flags
import aiohttp
import httpx
import numpy as np

from genrec import local_cluster, seal, tables
from genrec.artifact import Artifact

flags.DEFINE_string('artifact', None, 'Serving directory (gin/runs/export.gin).', required=True)
flags.DEFINE_list('concurrency', ['1', '8', '32', '128'], 'Concurrent clients per level.')
flags.DEFINE_float('seconds', 20.0, 'Duration of each level.')
flags.DEFINE_integer('max_requests', 20000, 'At most this many requests per level.')
flags.DEFINE_integer('batch_size', 256, 'In-process batch size.')
flags.DEFINE_integer('repeats', 20, 'In-process timing repeats.')
flags.DEFINE_integer('max_batch', 64, 'Server --max_batch.')
flags.DEFINE_float('window_ms', 2.0, 'Server --window_ms.')
flags.DEFINE_list('batch_curve', ['1', '8', '16', '32', '64', '256'],
                  'In-process queries/s at these batch sizes too (the efficiency curve).')
flags.DEFINE_string('ranker', None, 'A ranker serving directory (export_ranker.gin): '
                    'two-stage requests.')
flags.DEFINE_string('queries', None, 'A retriever\'s queries: BEIR queries.jsonl (default '
                    '$GENREC_DATA_DIR/<the artifact\'s collection>/queries.jsonl).')
flags.DEFINE_string('output_dir', None, 'Where to write serving.md/.csv (a retriever: '
                    'serving_<method>.md/.csv).')
FLAGS = flags.FLAGS


def rss_mb(pid: int) -> float:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def histories(num_items: int, max_history: int, n: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, num_items + 1, rng.integers(1, max_history + 1)).tolist()
          for _ in range(n)]


class Workload:
  """What is served and how to ask it: the in-process function, input rows
  for it, the HTTP requests, the endpoint and the server's flag."""

  def __init__(self, art: Artifact, queries_file: str | None = None):
    self.art = art
    if art.kind == 'retriever':
      import sentencepiece  # pylint: disable=g-import-not-at-top (retrievers only)
      m = art.manifest
      path = queries_file or os.path.join(os.environ.get('GENREC_DATA_DIR', ''),
                                          m['collection'], 'queries.jsonl')
      with open(path) as f:
        self.texts = [json.loads(line)['text'] for line in f if line.strip()]
      sp = sentencepiece.SentencePieceProcessor(
          model_file=os.path.join(art.directory, m['tokenizer']))
      self.tokens = [sp.encode(t)[:m['input_len']] for t in self.texts]
      self.fn = seal.SealRetriever(art) if m['method'] == 'seal' else art
      self.endpoint, self.flag = '/v1/retrieve', '--retriever'
    else:
      self.fn, self.endpoint, self.flag = art, '/v1/recommend', '--artifact'

  def rows(self, n: int, seed: int) -> np.ndarray:
    """int32 [n, width]: random catalog histories (or queries), 0-padded."""
    if self.art.kind == 'retriever':
      order = np.random.default_rng(seed).permutation(len(self.tokens))
      rows = np.zeros((n, self.art.manifest['input_len']), np.int32)
      for i in range(n):
        t = self.tokens[order[i % len(order)]]
        rows[i, :len(t)] = t
      return rows
    rows = np.zeros((n, self.art.max_history), np.int32)
    for i, h in enumerate(histories(self.art.manifest['num_items'], self.art.max_history, n,
                                    seed)):
      rows[i, :len(h)] = h
    return rows

  def bodies(self, n: int, seed: int) -> list[bytes]:
    if self.art.kind == 'retriever':
      order = np.random.default_rng(seed).permutation(len(self.texts))
      return [json.dumps({'query': self.texts[i], 'k': self.art.k}).encode() for i in order]
    external = self.art.external_ids()  # the server speaks the data's external ids, if any
    return [json.dumps({'history': [external[i] for i in h] if external else h,
                        'k': self.art.k}).encode()
            for h in histories(self.art.manifest['num_items'], self.art.max_history, n, seed)]

  def queries_per_s(self, rows: np.ndarray, repeats: int) -> float:
    """len(rows) / the median time of `repeats` calls (after one untimed call)."""
    self.fn(rows)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      self.fn(rows)
      times.append(time.perf_counter() - t0)
    return round(len(rows) / float(np.median(times)), 1)

  def batch_curve(self, sizes: list[int], repeats: int) -> dict:
    """In-process queries/s per batch size (median of `repeats` calls)."""
    return {size: self.queries_per_s(self.rows(size, seed=2), repeats) for size in sizes}

  def in_process(self, batch_size: int, repeats: int, batched: float | None = None) -> dict:
    """The batched rate (`batched` if the batch curve already measured it) and 1-query ms."""
    rows = self.rows(batch_size, seed=0)
    if batched is None:
      batched = self.queries_per_s(rows, max(3, repeats // 4))
    self.fn(rows[:1])  # compiles batch size 1
    single = []
    for i in range(repeats):
      t0 = time.perf_counter()
      self.fn(rows[i % batch_size:i % batch_size + 1])
      single.append(time.perf_counter() - t0)
    return {'in_process_queries_per_s': batched,
            'in_process_1_query_ms': round(float(np.median(single)) * 1e3, 2)}


def directory_sizes(path: str) -> dict:
  """MiB per top-level entry of a serving directory (folders summed)."""
  out = {}
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    files = [os.path.join(d, f) for d, _, fs in os.walk(full) for f in fs] if os.path.isdir(
        full) else [full]
    out[name] = round(sum(os.path.getsize(f) for f in files) / 2**20, 2)
  return out


async def load(url: str, clients: int, seconds: float, max_requests: int,
               bodies: list[bytes]) -> dict:
  """`clients` closed-loop aiohttp clients (one keep-alive connection each)
  for `seconds`. aiohttp: the load generator shares the server's cores, and
  it spends about a fifth of httpx's CPU per request."""
  latencies, errors, sent = [], 0, 0
  stop = time.perf_counter() + seconds

  async def client(c: int, http: aiohttp.ClientSession):
    nonlocal errors, sent
    i = c
    while time.perf_counter() < stop and sent < max_requests:
      sent += 1
      t0 = time.perf_counter()
      try:
        async with http.post(url, data=bodies[i % len(bodies)],
                             headers={'content-type': 'application/json'}) as r:
          await r.read()
          ok = r.status == 200
      except (aiohttp.ClientError, asyncio.TimeoutError):
        ok = False
      latencies.append(time.perf_counter() - t0)
      errors += not ok
      i += clients
  connector = aiohttp.TCPConnector(limit=clients)
  async with aiohttp.ClientSession(connector=connector,
                                   timeout=aiohttp.ClientTimeout(total=120)) as http:
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c, http) for c in range(clients)))
    wall = time.perf_counter() - t0
  ms = np.array(latencies) * 1e3
  return {'clients': clients, 'requests': len(latencies), 'errors': errors,
          'qps': round(len(latencies) / wall, 1),
          'p50_ms': round(float(np.percentile(ms, 50)), 1),
          'p95_ms': round(float(np.percentile(ms, 95)), 1),
          'p99_ms': round(float(np.percentile(ms, 99)), 1)}


def main(argv):
  del argv
  # httpx logs every request at INFO: in a load test that is load-generator
  # CPU taken from the server on the same cores.
  logging.getLogger('httpx').setLevel(logging.WARNING)
  art = Artifact(FLAGS.artifact)
  work = Workload(art, FLAGS.queries)
  if FLAGS.ranker and art.kind != 'recommender':
    raise app.UsageError('--ranker goes with a recommender --artifact.')
  # One figure per batch size: the base rate is the curve's when the curve has its size.
  curve = work.batch_curve([int(b) for b in FLAGS.batch_curve], max(5, FLAGS.repeats // 4))
  print(f'in-process queries/s by batch size: {curve}', flush=True)
  base = work.in_process(FLAGS.batch_size, FLAGS.repeats, curve.get(FLAGS.batch_size))
  print(json.dumps(base), flush=True)
  port = local_cluster.free_port()
  t0 = time.time()
  server = subprocess.Popen([sys.executable, '-m', 'genrec.serve',
                             f'{work.flag}={FLAGS.artifact}', f'--port={port}',
                             f'--max_batch={FLAGS.max_batch}',
                             f'--window_ms={FLAGS.window_ms}'] +
                            ([f'--ranker={FLAGS.ranker}'] if FLAGS.ranker else []))
  try:
    url = f'http://127.0.0.1:{port}'
    while True:
      if server.poll() is not None:
        raise RuntimeError(f'The server exited with {server.returncode}.')
      try:
        if httpx.get(f'{url}/healthz', timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.1)
    meta = httpx.get(f'{url}/v1/metadata').json()
    load_s = meta['limits']['load_to_first_answer_s']
    print(f'server up in {time.time() - t0:.1f}s (artifact load to first answer {load_s}s)',
          flush=True)
    while not httpx.get(f'{url}/v1/metadata').json()['warm']:  # batch sizes compiling
      time.sleep(0.5)
    print(f'server warm (every batch size compiled) after {time.time() - t0:.1f}s', flush=True)
    bodies = work.bodies(4096, seed=1)
    rows = []
    for clients in (int(c) for c in FLAGS.concurrency):
      before = rss_mb(server.pid)
      row = asyncio.run(load(f'{url}{work.endpoint}', clients, FLAGS.seconds,
                             FLAGS.max_requests, bodies))
      row.update(two_stage=bool(FLAGS.ranker), server_rss_before_mb=round(before, 1),
                 server_rss_after_mb=round(rss_mb(server.pid), 1), **base,
                 qps_vs_in_process=round(row['qps'] / base['in_process_queries_per_s'], 2))
      rows.append(row)
      print(tables.markdown([row]), flush=True)
    healthy = httpx.get(f'{url}/healthz').status_code == 200
  finally:
    server.terminate()
    server.wait(30)
  date = time.strftime('%Y-%m-%d')
  command = 'python -m genrec.benchmarks.serving ' + ' '.join(sys.argv[1:])
  text = tables.markdown(rows)
  sizes = directory_sizes(FLAGS.artifact)
  m = art.manifest
  if art.kind == 'retriever':
    what = (f'{m["method"]} retriever, {m["collection"]}, {m["num_items"]} documents, beam '
            f'{m["beam_size"]}, k {m["k"]}, {len(work.texts)} queries cycled')
    name = f'serving_{m["method"]}'
  else:
    # Exports before the model classes name the model by its config's architecture.
    model_name = m.get('model') or m['model_config'].get('architecture')
    what = (f'{model_name}, {m["dataset"]}, {m["num_items"]} items, '
            f'beam {m["beam_size"]}, two-stage with {FLAGS.ranker or "no ranker"}, '
            f'constrained {m["constrained_decoding"]}')
    name = 'serving_two_stage' if FLAGS.ranker else 'serving'
  summary = (f'# Serving load test\n\n`{command}` ({date}; artifact files (MiB): {sizes}; '
             f'artifact: {what}; load to first answer {load_s} s; healthz after the test: '
             f'{healthy}; in-process queries/s by batch size: {curve})\n\n{text}\n')
  print(summary, flush=True)
  if FLAGS.output_dir:
    for r in rows:
      r.update(date=date, commit=tables.source_commit(), command=command,
               load_to_first_answer_s=load_s)
    tables.write(summary, rows, FLAGS.output_dir, name)


if __name__ == '__main__':
  app.run(main)
