r"""Load test of the recommendation server beside in-process inference of the
same exported artifact.

  python -m genrec.benchmarks.serving --artifact=runs/beauty/serving \
      --concurrency=1,8,32,128 --seconds=20 --output_dir=docs/results

Starts `genrec.serve` on loopback in its own process, then for
each concurrency level runs that many aiohttp clients (asyncio), each sending
one request after the other for `--seconds` (at most `--max_requests` in all),
with histories drawn from the artifact's catalog (1 to max_history items).
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
import socket
import subprocess
import sys
import time

from absl import app, flags
import aiohttp
import httpx
import numpy as np

from genrec import tables
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
flags.DEFINE_string('output_dir', None, 'Where to write serving.md/.csv.')
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


def history_rows(art: Artifact, n: int, seed: int) -> np.ndarray:
  """int32 [n, max_history]: random catalog histories, 0-padded at the end."""
  rows = np.zeros((n, art.max_history), np.int32)
  for i, h in enumerate(histories(art.manifest['num_items'], art.max_history, n, seed)):
    rows[i, :len(h)] = h
  return rows


def queries_per_s(art: Artifact, rows: np.ndarray, repeats: int) -> float:
  """len(rows) / the median time of `repeats` calls (after one untimed call)."""
  art(rows)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    art(rows)
    times.append(time.perf_counter() - t0)
  return round(len(rows) / float(np.median(times)), 1)


def batch_curve(art: Artifact, sizes: list[int], repeats: int) -> dict:
  """In-process queries/s per batch size (median of `repeats` calls)."""
  return {size: queries_per_s(art, history_rows(art, size, seed=2), repeats) for size in sizes}


def directory_sizes(path: str) -> dict:
  """MiB per top-level entry of a serving directory (folders summed)."""
  out = {}
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    files = [os.path.join(d, f) for d, _, fs in os.walk(full) for f in fs] if os.path.isdir(
        full) else [full]
    out[name] = round(sum(os.path.getsize(f) for f in files) / 2**20, 2)
  return out


def in_process(art: Artifact, batch_size: int, repeats: int) -> dict:
  rows = history_rows(art, batch_size, seed=0)
  batched = queries_per_s(art, rows, max(3, repeats // 4))
  art(rows[:1])
  single = []
  for i in range(repeats):
    t0 = time.perf_counter()
    art(rows[i % batch_size:i % batch_size + 1])
    single.append(time.perf_counter() - t0)
  return {'in_process_queries_per_s': batched,
          'in_process_1_query_ms': round(float(np.median(single)) * 1e3, 2)}


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
  base = in_process(art, FLAGS.batch_size, FLAGS.repeats)
  print(json.dumps(base), flush=True)
  curve = batch_curve(art, [int(b) for b in FLAGS.batch_curve], max(5, FLAGS.repeats // 4))
  print(f'in-process queries/s by batch size: {curve}', flush=True)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  t0 = time.time()
  server = subprocess.Popen([sys.executable, '-m', 'genrec.serve',
                             f'--artifact={FLAGS.artifact}', f'--port={port}',
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
    external = art.external_ids()  # the server speaks the data's external ids, if any
    bodies = [json.dumps({'history': [external[i] for i in h] if external else h,
                          'k': art.k}).encode()
              for h in histories(art.manifest['num_items'], art.max_history, 4096, seed=1)]
    rows = []
    for clients in (int(c) for c in FLAGS.concurrency):
      before = rss_mb(server.pid)
      row = asyncio.run(load(f'{url}/v1/recommend', clients, FLAGS.seconds,
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
  summary = (f'# Serving load test\n\n`{command}` ({date}; artifact files (MiB): {sizes}; '
             f'artifact: '
             f'{art.manifest["model_config"]["architecture"]}, {art.manifest["dataset"]}, '
             f'{art.manifest["num_items"]} items, beam {art.manifest["beam_size"]}, '
             f'two-stage with {FLAGS.ranker or "no ranker"}, '
             f'constrained {art.manifest["constrained_decoding"]}; load to first answer '
             f'{load_s} s; healthz after the test: {healthy}; in-process queries/s by batch '
             f'size: {curve})\n\n{text}\n')
  print(summary, flush=True)
  if FLAGS.output_dir:
    for r in rows:
      r.update(date=date, command=command, load_to_first_answer_s=load_s)
    tables.write(summary, rows, FLAGS.output_dir,
                 'serving_two_stage' if FLAGS.ranker else 'serving')


if __name__ == '__main__':
  app.run(main)
