r"""An HTTP server for an exported recommender (a serving directory written by
`python main.py --gin_file=gin/runs/export.gin --workdir=RUN`).

  python -m genrec.recommendation.serve --artifact=runs/quickstart/serving --port=8000
  (or the installed command: genrec-serve --artifact=... --port=8000)
  curl -s localhost:8000/v1/recommend -d '{"history": ["B00012", "B00345"], "k": 10}'

Starlette on uvicorn; imports jax, numpy and the artifact loader only (no
flax, optax, orbax, seqio, TensorFlow or gin). Endpoints:

  POST /v1/recommend  {"history": [external item ids, oldest first], "k": 10}
                      -> {"items": [...], "scores": [...], "unknown": [...],
                          "truncated": n}
  GET  /v1/metadata   the artifact's manifest and the server's limits
  GET  /healthz       {"status": "ok"} while the process serves

Concurrent requests are batched (`Batcher`: a bounded queue, a batching
window, batches padded to powers of two so that a few compiled shapes serve
every load). External ids are the data's (items.tsv, e.g. ASINs), or the item
ids themselves when the artifact has no map.

Input policy (every violation is a 4xx with a message; nothing crashes the
server):
  - unknown item ids in the history: dropped and listed in "unknown"
    (--unknown=drop, the default) or the request is refused with 422
    (--unknown=refuse); a history with no known item left is refused (422);
  - longer histories than the model's max_history keep the most recent items
    ("truncated" says how many were cut);
  - k must be an integer in 1..the exported k; body over --max_body_bytes: 413;
    malformed JSON: 400; wrong types or missing fields: 422;
  - a full queue (--max_queue requests waiting): 503 with Retry-After.
"""

import argparse
import asyncio
import contextlib
import json
import threading
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from genrec.recommendation.artifact import Artifact


class BadRequest(Exception):
  def __init__(self, status: int, message: str, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers


class Batcher:
  """Collects concurrent rows into batches for one model call at a time.

  A request waits at most `window_s` for others to join its batch (none when
  the model is idle and the queue empty: the first request of a quiet period
  runs at once); batches hold at most `max_batch` rows, padded up to a power
  of two. The model runs in a worker thread, so the event loop keeps
  accepting requests meanwhile.
  """

  def __init__(self, fn, width: int, max_batch: int = 64, window_s: float = 0.002,
               max_queue: int = 1024):
    self.fn, self.width = fn, width
    self.max_batch, self.window_s = max_batch, window_s
    self.queue: asyncio.Queue | None = None
    self.max_queue = max_queue
    self.batches = self.rows = 0  # served so far (GET /v1/metadata)
    self.warm = False  # every batch size compiled (GET /v1/metadata)
    self.sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    if self.sizes[-1] != max_batch:
      self.sizes.append(max_batch)

  def padded_size(self, n: int) -> int:
    return next(s for s in self.sizes if s >= n)

  def warm_up(self) -> None:
    """Compiles every padded batch size (blocking); sets `warm` when done."""
    for size in self.sizes:
      self.fn(np.zeros((size, self.width), np.int32))
    self.warm = True

  async def start(self) -> None:
    self.queue = asyncio.Queue(self.max_queue)
    self.task = asyncio.get_running_loop().create_task(self._run())

  async def submit(self, row: np.ndarray):
    if self.queue.full():
      raise BadRequest(503, f'Overloaded: {self.max_queue} requests are waiting; retry '
                       'shortly.', {'Retry-After': '1'})
    future = asyncio.get_running_loop().create_future()
    self.queue.put_nowait((row, future))
    return await future

  async def _run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self.queue.get()]
      deadline = loop.time() + self.window_s
      while len(batch) < self.max_batch:
        timeout = deadline - loop.time()
        if timeout <= 0 and self.queue.empty():
          break
        try:
          batch.append(await asyncio.wait_for(self.queue.get(), max(timeout, 0)))
        except asyncio.TimeoutError:
          break
      self.batches += 1
      self.rows += len(batch)
      rows = np.zeros((self.padded_size(len(batch)), self.width), np.int32)
      for i, (row, _) in enumerate(batch):
        rows[i] = row
      try:
        items, scores = await loop.run_in_executor(None, self.fn, rows)
      except Exception as e:  # the model failed: every waiting request gets a 500
        for _, future in batch:
          if not future.done():
            future.set_exception(BadRequest(500, f'Inference failed: {e}'))
        continue
      for i, (_, future) in enumerate(batch):
        if not future.done():
          future.set_result((items[i], scores[i]))


class Recommender:
  """Request parsing and the id maps around an `Artifact`."""

  def __init__(self, directory: str, unknown: str = 'drop'):
    if unknown not in ('drop', 'refuse'):
      raise ValueError(f"unknown must be 'drop' or 'refuse', not {unknown!r}.")
    self.artifact = Artifact(directory)
    self.manifest = self.artifact.manifest
    self.unknown = unknown
    self.max_history = self.artifact.max_history
    self.k = self.artifact.k
    self.num_items = self.manifest['num_items']
    self.external = self.artifact.external_ids()  # None: external ids are the item ids
    self.internal = None if self.external is None else {
        key: i for i, key in enumerate(self.external) if i}

  def _item_id(self, value):
    if self.internal is not None:
      return self.internal.get(str(value))
    if isinstance(value, bool):
      return None
    try:
      i = int(value)
    except (TypeError, ValueError):
      return None
    return i if 1 <= i <= self.num_items and str(i) == str(value).strip() else None

  def parse(self, body: bytes) -> tuple[np.ndarray, int, list, int]:
    """(history row [max_history], k, unknown ids, items cut) of a request body."""
    try:
      request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise BadRequest(400, f'The body is not valid JSON: {e}.') from None
    if not isinstance(request, dict):
      raise BadRequest(422, 'The body must be a JSON object {"history": [...], "k": 10}.')
    extra = set(request) - {'history', 'k'}
    if extra:
      raise BadRequest(422, f'Unknown fields {sorted(extra)}; the fields are "history" and '
                       '"k".')
    history = request.get('history')
    if not isinstance(history, list) or not history:
      raise BadRequest(422, '"history" must be a non-empty list of item ids, oldest first.')
    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in history):
      raise BadRequest(422, '"history" items must be strings or integers (item ids).')
    k = request.get('k', self.k)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.k:
      raise BadRequest(422, f'"k" must be an integer in 1..{self.k} (the exported k), not '
                       f'{k!r}.')
    ids = [self._item_id(x) for x in history]
    unknown = [x for x, i in zip(history, ids) if i is None]
    if unknown and self.unknown == 'refuse':
      raise BadRequest(422, f'Unknown item ids {unknown[:20]}; this server refuses '
                       'histories with unknown items (--unknown=refuse).')
    known = [i for i in ids if i is not None]
    if not known:
      raise BadRequest(422, f'No known item in "history" (unknown: {unknown[:20]}).')
    cut = max(0, len(known) - self.max_history)
    known = known[cut:]
    row = np.zeros(self.max_history, np.int32)
    row[:len(known)] = known
    return row, k, unknown, cut

  def answer(self, items: np.ndarray, scores: np.ndarray, k: int) -> dict:
    keep = items[:k] > 0
    ids = items[:k][keep].tolist()
    return {'items': [self.external[i] for i in ids] if self.external else ids,
            'scores': [round(float(s), 6) for s in scores[:k][keep]]}


def make_app(directory: str, unknown: str = 'drop', max_batch: int = 64,
             window_ms: float = 2.0, max_queue: int = 1024,
             max_body_bytes: int = 65536, warm_up: bool = True) -> Starlette:
  """The ASGI app serving the artifact in `directory`."""
  t0 = time.time()
  rec = Recommender(directory, unknown)
  batcher = Batcher(rec.artifact, rec.max_history, max_batch, window_ms / 1000, max_queue)
  rec.artifact(np.zeros((1, rec.max_history), np.int32))  # compiles batch 1: first answer
  load_s = time.time() - t0
  if warm_up:  # the other batch sizes compile in the background
    threading.Thread(target=batcher.warm_up, daemon=True).start()
  limits = {'max_batch': max_batch, 'window_ms': window_ms, 'max_queue': max_queue,
            'max_body_bytes': max_body_bytes, 'unknown_items': unknown,
            'load_to_first_answer_s': round(load_s, 2)}

  def error(e: BadRequest) -> JSONResponse:
    return JSONResponse({'error': e.message}, e.status, headers=e.headers)

  async def recommend(request: Request):
    try:
      size = int(request.headers.get('content-length') or 0)
      if size > max_body_bytes:
        raise BadRequest(413, f'Body of {size} bytes is over the {max_body_bytes}-byte limit.')
      body = b''
      async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
          raise BadRequest(413, f'Body over the {max_body_bytes}-byte limit.')
      row, k, unknown, cut = rec.parse(body)
      items, scores = await batcher.submit(row)
      return JSONResponse({**rec.answer(items, scores, k), 'unknown': unknown,
                           'truncated': cut})
    except BadRequest as e:
      return error(e)
    except Exception as e:  # never let one request take the server down
      return error(BadRequest(500, f'Internal error: {type(e).__name__}: {e}'))

  async def metadata(request: Request):
    return JSONResponse({'manifest': rec.manifest, 'limits': limits,
                         'served': {'batches': batcher.batches, 'requests': batcher.rows},
                         'warm': batcher.warm})

  async def healthz(request: Request):
    return JSONResponse({'status': 'ok'})

  @contextlib.asynccontextmanager
  async def lifespan(app):
    await batcher.start()
    yield
    batcher.task.cancel()

  return Starlette(routes=[Route('/v1/recommend', recommend, methods=['POST']),
                           Route('/v1/metadata', metadata, methods=['GET']),
                           Route('/healthz', healthz, methods=['GET'])],
                   lifespan=lifespan)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--artifact', required=True, help='The serving directory (export run mode).')
  p.add_argument('--host', default='127.0.0.1')
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--unknown', choices=('drop', 'refuse'), default='drop',
                 help='Unknown item ids in a history: drop them, or refuse the request.')
  p.add_argument('--max_batch', type=int, default=64)
  p.add_argument('--window_ms', type=float, default=2.0)
  p.add_argument('--max_queue', type=int, default=1024)
  p.add_argument('--max_body_bytes', type=int, default=65536)
  a = p.parse_args(argv)
  import uvicorn  # the server process only
  app = make_app(a.artifact, a.unknown, a.max_batch, a.window_ms, a.max_queue,
                 a.max_body_bytes)
  uvicorn.run(app, host=a.host, port=a.port, log_level='warning')


if __name__ == '__main__':
  main()
