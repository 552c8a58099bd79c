r"""An HTTP server for exported models: a recommender (`python main.py
--gin_file=gin/runs/export.gin --workdir=RUN`), a Semantic-ID ranker
(gin/runs/export_ranker.gin), both (two-stage recommendation), and/or a
document retriever, DSI or SEAL (gin/runs/export_retriever.gin).

  python -m genrec.serve --artifact=runs/quickstart/serving --port=8000
  (or the installed command: genrec-serve --artifact=... [--ranker=...])
  curl -s localhost:8000/v1/recommend -d '{"history": ["B00012", "B00345"], "k": 10}'

Starlette on uvicorn; imports jax, numpy and the artifact loader only (no
flax, optax, orbax, seqio, TensorFlow or gin). Endpoints:

  POST /v1/recommend  {"history": [external item ids, oldest first], "k": 10,
                       "rerank": true}
                      -> {"items": [...], "scores": [...], "unknown": [...],
                          "truncated": n}
                      (with --artifact). With --ranker too, two stages: the
                      recommender's top-N (its exported k) by constrained
                      beam search, re-ranked by the ranker: "scores" are the
                      ranker's logits, "generation_scores" the beam scores;
                      "rerank": false skips the second stage.
  POST /v1/rank       {"history": [...], "candidates": [...]} (with --ranker)
                      -> {"items": [candidates best first], "scores": [...],
                          "unknown": [...], "truncated": n}
  POST /v1/retrieve   {"query": "text", "k": 10} (with --retriever: a DSI
                      model decodes docids inside its artifact; a SEAL model
                      decodes n-grams with the FM-index on the host between
                      device steps, `genrec.seal.SealRetriever`)
                      -> {"documents": [document ids], "scores": [...],
                          "truncated": query tokens cut}; the query is
                      tokenized with the artifact's SentencePiece model
  GET  /v1/metadata   the artifacts' manifests and the server's limits
  GET  /healthz       {"status": "ok"} while the process serves

Concurrent requests are batched (`Batcher`: a bounded queue, a batching
window, batches padded to powers of two, candidate lists padded to powers of
two, so that a few compiled shapes serve every load). External ids are the
data's (items.tsv, e.g. ASINs), or the item ids themselves when the artifact
has no map; two artifacts served together must share their item ids.

Input policy (every violation is a 4xx with a message; nothing crashes the
server):
  - unknown item ids in the history or the candidates: dropped and listed in
    "unknown" (--unknown=drop, the default) or the request is refused with
    422 (--unknown=refuse); a history (or candidate list) with no known item
    left is refused (422);
  - longer histories than the model's max_history keep the most recent items
    ("truncated" says how many were cut);
  - k must be an integer in 1..the exported k; at most --max_candidates
    candidates; body over --max_body_bytes: 413; malformed JSON: 400; wrong
    types or missing fields: 422;
  - a full queue (--max_queue requests waiting): 503 with Retry-After.
"""

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from genrec import seal
from genrec.artifact import Artifact


class BadRequest(Exception):
  def __init__(self, status: int, message: str, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers


class _WordPiece:
  """A WordPiece tokenizer.json read with the `tokenizers` package, ids
  without special tokens (a pretrained-encoder retriever adds them itself)."""

  def __init__(self, path: str):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top (these only)
    self.tokenizer = Tokenizer.from_file(path)
    self.tokenizer.no_truncation()
    self.tokenizer.no_padding()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids


def query_tokenizer(directory: str, manifest: dict):
  """The retriever artifact's query tokenizer: its `encode(text)` gives the
  ids the model reads (SentencePiece, or a pretrained encoder's WordPiece)."""
  path = os.path.join(directory, manifest['tokenizer'])
  if manifest.get('tokenizer_kind', 'sentencepiece') == 'wordpiece':
    return _WordPiece(path)
  import sentencepiece  # pylint: disable=g-import-not-at-top (retrievers only)
  return sentencepiece.SentencePieceProcessor(model_file=path)


class Batcher:
  """Collects concurrent requests into batches for one model call at a time.

  `fn(*inputs)` takes one array per input, [batch, *shape] with the shapes
  given, and returns arrays [batch, ...]; each request submits one row per
  input and gets its row of every output. A request waits at most `window_s`
  for others to join its batch (none when the model is idle and the queue
  empty: the first request of a quiet period runs at once); batches hold at
  most `max_batch` rows, padded with zeros up to a power of two. The model
  runs in a worker thread, so the event loop keeps accepting requests
  meanwhile.
  """

  def __init__(self, fn, shapes: tuple[tuple[int, ...], ...], max_batch: int = 64,
               window_s: float = 0.002, max_queue: int = 1024):
    self.fn, self.shapes = fn, shapes
    self.max_batch, self.window_s = max_batch, window_s
    self.queue: asyncio.Queue | None = None
    self.max_queue = max_queue
    self.batches = self.rows = 0  # served so far (GET /v1/metadata)
    self.model_seconds = 0.0  # wall time inside the model calls
    self.warm = False  # every batch size compiled (GET /v1/metadata)
    self.sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    if self.sizes[-1] != max_batch:
      self.sizes.append(max_batch)

  def padded_size(self, n: int) -> int:
    return next(s for s in self.sizes if s >= n)

  def _zeros(self, size: int) -> list[np.ndarray]:
    return [np.zeros((size, *shape), np.int32) for shape in self.shapes]

  def warm_up(self, stop: threading.Event | None = None) -> None:
    """Compiles every padded batch size (blocking; returns early once `stop`
    is set); sets `warm` when done."""
    for size in self.sizes:
      if stop is not None and stop.is_set():
        return
      self.fn(*self._zeros(size))
    self.warm = True

  async def start(self) -> None:
    self.queue = asyncio.Queue(self.max_queue)
    self.task = asyncio.get_running_loop().create_task(self._run())

  async def submit(self, *rows: np.ndarray) -> tuple[np.ndarray, ...]:
    if self.queue.full():
      raise BadRequest(503, f'Overloaded: {self.max_queue} requests are waiting; retry '
                       'shortly.', {'Retry-After': '1'})
    future = asyncio.get_running_loop().create_future()
    self.queue.put_nowait((rows, future))
    return await future

  async def _run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self.queue.get()]
      deadline = loop.time() + self.window_s
      while len(batch) < self.max_batch:
        try:  # everything already waiting joins (wait_for(..., 0) would drop it)
          batch.append(self.queue.get_nowait())
          continue
        except asyncio.QueueEmpty:
          pass
        timeout = deadline - loop.time()
        if timeout <= 0:
          break
        try:
          batch.append(await asyncio.wait_for(self.queue.get(), timeout))
        except asyncio.TimeoutError:
          break
      self.batches += 1
      self.rows += len(batch)
      inputs = self._zeros(self.padded_size(len(batch)))
      for i, (rows, _) in enumerate(batch):
        for x, row in zip(inputs, rows):
          x[i] = row
      try:
        t0 = time.perf_counter()
        outputs = await loop.run_in_executor(None, self.fn, *inputs)
        self.model_seconds += time.perf_counter() - t0
      except Exception as e:  # the model failed: every waiting request gets a 500
        for _, future in batch:
          if not future.done():
            future.set_exception(BadRequest(500, f'Inference failed: {e}'))
        continue
      for i, (_, future) in enumerate(batch):
        if not future.done():
          future.set_result(tuple(y[i] for y in outputs))


class Items:
  """External item ids <-> item ids of the served artifacts, and the parsing
  of item lists under the unknown-id policy."""

  def __init__(self, artifacts: list[Artifact], unknown: str = 'drop'):
    if unknown not in ('drop', 'refuse'):
      raise ValueError(f"unknown must be 'drop' or 'refuse', not {unknown!r}.")
    self.unknown = unknown
    first = artifacts[0]
    self.num_items = first.manifest['num_items']
    self.external = first.external_ids()  # None: external ids are the item ids
    for other in artifacts[1:]:
      if (other.manifest['num_items'], other.external_ids()) != (self.num_items,
                                                                 self.external):
        raise ValueError(
            f'{first.directory} ({self.num_items} items) and {other.directory} '
            f'({other.manifest["num_items"]} items) do not share their item ids: serve '
            'together only artifacts of runs on the same data set.')
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

  def parse(self, request: dict, field: str) -> tuple[list[int], list]:
    """(known item ids, unknown values) of the list `request[field]`."""
    values = request.get(field)
    if not isinstance(values, list) or not values:
      raise BadRequest(422, f'"{field}" must be a non-empty list of item ids' + (
          ', oldest first.' if field == 'history' else '.'))
    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in values):
      raise BadRequest(422, f'"{field}" items must be strings or integers (item ids).')
    ids = [self._item_id(x) for x in values]
    unknown = [x for x, i in zip(values, ids) if i is None]
    if unknown and self.unknown == 'refuse':
      raise BadRequest(422, f'Unknown item ids {unknown[:20]} in "{field}"; this server '
                       'refuses requests with unknown items (--unknown=refuse).')
    known = [i for i in ids if i is not None]
    if not known:
      raise BadRequest(422, f'No known item in "{field}" (unknown: {unknown[:20]}).')
    return known, unknown

  def names(self, ids) -> list:
    return [self.external[i] for i in ids] if self.external else [int(i) for i in ids]


def history_row(known: list[int], width: int) -> tuple[np.ndarray, int]:
  """(int32 [width] the most recent items, oldest first, 0-padded; items cut)."""
  cut = max(0, len(known) - width)
  row = np.zeros(width, np.int32)
  row[:len(known) - cut] = known[cut:]
  return row, cut


def parse_k(request: dict, top: int) -> int:
  """The request's "k" (default the exported k), an integer in 1..top."""
  k = request.get('k', top)
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= top:
    raise BadRequest(422, f'"k" must be an integer in 1..{top} (the exported k), not {k!r}.')
  return k


def rounded(scores: np.ndarray) -> list[float]:
  return [round(float(s), 6) for s in scores]


def parse_json(body: bytes, fields: dict[str, bool]) -> dict:
  """The request object; `fields`: name -> required."""
  try:
    request = json.loads(body)
  except (ValueError, RecursionError) as e:  # also too deep or too long a number
    reason = 'nested too deeply' if isinstance(e, RecursionError) else e
    raise BadRequest(400, f'The body is not valid JSON: {reason}.') from None
  if not isinstance(request, dict):
    raise BadRequest(422, 'The body must be a JSON object with the fields '
                     f'{sorted(fields)}.')
  extra = set(request) - set(fields)
  if extra:
    raise BadRequest(422, f'Unknown fields {sorted(extra)}; the fields are {sorted(fields)}.')
  missing = [f for f, required in fields.items() if required and f not in request]
  if missing:
    raise BadRequest(422, f'Missing fields {missing}.')
  return request


class Service:
  """The served artifacts, their batchers and the request handling."""

  def __init__(self, recommender: str | None = None, ranker: str | None = None,
               unknown: str = 'drop', max_batch: int = 64, window_s: float = 0.002,
               max_queue: int = 1024, max_candidates: int = 256, retriever: str | None = None):
    if not (recommender or ranker or retriever):
      raise ValueError('Serve at least one artifact: --artifact (a recommender), --ranker '
                       'or --retriever.')
    self.recommender = recommender and Artifact(recommender).expect('recommender')
    self.ranker = ranker and Artifact(ranker).expect('ranker')
    self.retriever = retriever and Artifact(retriever).expect('retriever')
    self.items = (self.recommender or self.ranker) and Items(
        [a for a in (self.recommender, self.ranker) if a], unknown)
    if self.recommender and self.ranker and self.recommender.k > max_candidates:
      raise ValueError(f'The recommender generates {self.recommender.k} items to re-rank, '
                       f'over --max_candidates={max_candidates}: raise --max_candidates.')
    self.max_candidates = max_candidates
    self.batchers = {}
    if self.retriever:
      self.tokenizer = query_tokenizer(retriever, self.retriever.manifest)
      self.documents = self.retriever.external_ids()
      # DSI decodes inside the artifact; SEAL's loop needs the FM-index on the host.
      self.retrieve_fn = (seal.SealRetriever(self.retriever)
                          if self.retriever.manifest.get('method') == 'seal' else self.retriever)
      self.batchers['retrieve'] = Batcher(
          self.retrieve_fn, ((self.retriever.manifest['input_len'],),), max_batch, window_s,
          max_queue)
    if self.recommender:
      self.batchers['recommend'] = Batcher(self.recommender, ((self.recommender.max_history,),),
                                           max_batch, window_s, max_queue)
    if self.ranker:
      # One batcher per padded candidate count (8, 16, ... max_candidates).
      self.buckets = [1 << i for i in range(3, max_candidates.bit_length())
                      if 1 << i < max_candidates] + [max_candidates]
      for bucket in self.buckets:
        self.batchers[f'rank/{bucket}'] = Batcher(
            self.ranker, ((self.ranker.max_history,), (bucket,)), max_batch, window_s,
            max_queue)

  def first_answer(self) -> None:
    """Compiles batch size 1 of each artifact (the smallest candidate list)."""
    if self.retriever:
      self.retrieve_fn(np.zeros((1, self.retriever.manifest['input_len']), np.int32))
    if self.recommender:
      self.recommender(np.zeros((1, self.recommender.max_history), np.int32))
    if self.ranker:
      self.ranker(np.zeros((1, self.ranker.max_history), np.int32),
                  np.zeros((1, self.buckets[0]), np.int32))

  def warm_up(self, stop: threading.Event) -> None:
    for batcher in self.batchers.values():
      batcher.warm_up(stop)

  async def _rank(self, known: list[int], candidates: list[int]) -> tuple[np.ndarray, int]:
    """(the ranker's logits [len(candidates)], history items cut)."""
    bucket = next(b for b in self.buckets if b >= len(candidates))
    row = np.zeros(bucket, np.int32)
    row[:len(candidates)] = candidates
    history, cut = history_row(known, self.ranker.max_history)
    scores, = await self.batchers[f'rank/{bucket}'].submit(history, row)
    return scores[:len(candidates)], cut

  async def recommend(self, body: bytes) -> dict:
    if not self.recommender:
      raise BadRequest(404, 'No recommender is served (start the server with --artifact).')
    request = parse_json(body, {'history': True, 'k': False, 'rerank': False})
    known, unknown = self.items.parse(request, 'history')
    k = parse_k(request, self.recommender.k)
    rerank = request.get('rerank', self.ranker is not None)
    if not isinstance(rerank, bool):
      raise BadRequest(422, f'"rerank" must be true or false, not {rerank!r}.')
    if rerank and not self.ranker:
      raise BadRequest(422, '"rerank" needs a ranker (start the server with --ranker).')
    row, cut = history_row(known, self.recommender.max_history)
    items, scores = await self.batchers['recommend'].submit(row)
    keep = items > 0
    items, scores = items[keep], scores[keep]
    answer = {'unknown': unknown, 'truncated': cut}
    if rerank and len(items):
      logits, _ = await self._rank(known, items.tolist())
      order = np.argsort(-logits, kind='stable')[:k]
      return {'items': self.items.names(items[order]), 'scores': rounded(logits[order]),
              'generation_scores': rounded(scores[order]), **answer}
    return {'items': self.items.names(items[:k]), 'scores': rounded(scores[:k]), **answer}

  async def retrieve(self, body: bytes) -> dict:
    if not self.retriever:
      raise BadRequest(404, 'No retriever is served (start the server with --retriever).')
    request = parse_json(body, {'query': True, 'k': False})
    query = request['query']
    if not isinstance(query, str) or not query.strip():
      raise BadRequest(422, '"query" must be a non-empty string.')
    k = parse_k(request, self.retriever.manifest['k'])
    width = self.retriever.manifest['input_len']
    tokens = self.tokenizer.encode(query)
    row = np.zeros(width, np.int32)
    row[:min(len(tokens), width)] = tokens[:width]
    documents, scores = await self.batchers['retrieve'].submit(row)
    keep = documents[:k] > 0
    return {'documents': [self.documents[i] for i in documents[:k][keep]],
            'scores': rounded(scores[:k][keep]), 'truncated': max(0, len(tokens) - width)}

  async def rank(self, body: bytes) -> dict:
    if not self.ranker:
      raise BadRequest(404, 'No ranker is served (start the server with --ranker).')
    request = parse_json(body, {'history': True, 'candidates': True})
    known, unknown = self.items.parse(request, 'history')
    if isinstance(request['candidates'], list) and (
        len(request['candidates']) > self.max_candidates):
      raise BadRequest(422, f'At most {self.max_candidates} candidates per request '
                       f'(--max_candidates), not {len(request["candidates"])}.')
    candidates, unknown_candidates = self.items.parse(request, 'candidates')
    logits, cut = await self._rank(known, candidates)
    order = np.argsort(-logits, kind='stable')
    return {'items': self.items.names(np.asarray(candidates)[order]),
            'scores': rounded(logits[order]), 'unknown': unknown + unknown_candidates,
            'truncated': cut}


def make_app(directory: str | None = None, unknown: str = 'drop', max_batch: int = 64,
             window_ms: float = 2.0, max_queue: int = 1024,
             max_body_bytes: int = 65536, warm_up: bool = True, ranker: str | None = None,
             max_candidates: int = 256, retriever: str | None = None) -> Starlette:
  """The ASGI app serving the recommender in `directory`, the `ranker` and/or
  the `retriever`."""
  t0 = time.time()
  service = Service(directory, ranker, unknown, max_batch, window_ms / 1000, max_queue,
                    max_candidates, retriever)
  service.first_answer()
  load_s = time.time() - t0
  # The other batch sizes compile in the background; shutdown waits for the
  # compilation in flight (a process must not exit while XLA compiles).
  stop = threading.Event()
  warm = threading.Thread(target=service.warm_up, args=(stop,), daemon=True)
  if warm_up:
    warm.start()
  limits = {'max_batch': max_batch, 'window_ms': window_ms, 'max_queue': max_queue,
            'max_body_bytes': max_body_bytes, 'max_candidates': max_candidates,
            'unknown_items': unknown, 'load_to_first_answer_s': round(load_s, 2)}

  def error(e: BadRequest) -> JSONResponse:
    return JSONResponse({'error': e.message}, e.status, headers=e.headers)

  def endpoint(handler):
    async def respond(request: Request):
      try:
        size = int(request.headers.get('content-length') or 0)
        if size > max_body_bytes:
          raise BadRequest(413, f'Body of {size} bytes is over the {max_body_bytes}-byte '
                           'limit.')
        body = b''
        async for chunk in request.stream():
          body += chunk
          if len(body) > max_body_bytes:
            raise BadRequest(413, f'Body over the {max_body_bytes}-byte limit.')
        return JSONResponse(await handler(body))
      except BadRequest as e:
        return error(e)
      except Exception as e:  # never let one request take the server down
        return error(BadRequest(500, f'Internal error: {type(e).__name__}: {e}'))
    return respond

  async def metadata(request: Request):
    batchers = service.batchers.values()
    return JSONResponse({
        'manifest': service.recommender.manifest if service.recommender else None,
        'ranker_manifest': service.ranker.manifest if service.ranker else None,
        'retriever_manifest': service.retriever.manifest if service.retriever else None,
        'limits': limits,
        'served': {'batches': sum(b.batches for b in batchers),
                   'requests': sum(b.rows for b in batchers),
                   'model_s': round(sum(b.model_seconds for b in batchers), 3)},
        'warm': all(b.warm for b in batchers)})

  async def healthz(request: Request):
    return JSONResponse({'status': 'ok'})

  @contextlib.asynccontextmanager
  async def lifespan(app):
    for batcher in service.batchers.values():
      await batcher.start()
    yield
    stop.set()
    for batcher in service.batchers.values():
      batcher.task.cancel()
    if warm.is_alive():
      warm.join()

  return Starlette(routes=[Route('/v1/recommend', endpoint(service.recommend), methods=['POST']),
                           Route('/v1/rank', endpoint(service.rank), methods=['POST']),
                           Route('/v1/retrieve', endpoint(service.retrieve), methods=['POST']),
                           Route('/v1/metadata', metadata, methods=['GET']),
                           Route('/healthz', healthz, methods=['GET'])],
                   lifespan=lifespan)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--artifact', help='A recommender\'s serving directory (export run mode).')
  p.add_argument('--ranker', help='A ranker\'s serving directory (export_ranker run mode); '
                 'with --artifact, /v1/recommend re-ranks the generated items.')
  p.add_argument('--retriever', help='A document retriever\'s (DSI or SEAL) serving directory '
                 '(export_retriever run mode): POST /v1/retrieve.')
  p.add_argument('--host', default='127.0.0.1')
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--unknown', choices=('drop', 'refuse'), default='drop',
                 help='Unknown item ids in a history: drop them, or refuse the request.')
  p.add_argument('--max_batch', type=int, default=64)
  p.add_argument('--window_ms', type=float, default=2.0)
  p.add_argument('--max_queue', type=int, default=1024)
  p.add_argument('--max_body_bytes', type=int, default=65536)
  p.add_argument('--max_candidates', type=int, default=256,
                 help='Candidates per /v1/rank request (and the re-ranked top-N) at most.')
  a = p.parse_args(argv)
  import uvicorn  # the server process only
  if not (a.artifact or a.ranker or a.retriever):
    p.error('give --artifact (a recommender), --ranker and/or --retriever.')
  app = make_app(a.artifact, a.unknown, a.max_batch, a.window_ms, a.max_queue,
                 a.max_body_bytes, ranker=a.ranker, max_candidates=a.max_candidates,
                 retriever=a.retriever)
  uvicorn.run(app, host=a.host, port=a.port, log_level='warning')


if __name__ == '__main__':
  main()
