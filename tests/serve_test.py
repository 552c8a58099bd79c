"""The HTTP server of an exported recommender: answers equal the artifact's,
concurrent requests are batched, bad input gets 4xx messages and never takes
the server down, and the server imports no training stack."""

import asyncio
import concurrent.futures
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from conftest import REPO_ROOT
from genrec import models, partitioning, trainer
from genrec.data import sequences
from genrec.ids import RandomCodeIds
from genrec.recommendation import artifact, export, serve, train

TINY = models.TransformerConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


@pytest.fixture
def served(tmp_path):
  """A tiny run on data with external ids (A0001...), exported, served on loopback."""
  tmp = tmp_path
  data = sequences.make_synthetic(num_users=120, num_items=50, seed=0)
  data = dataclasses.replace(data, item_keys=('',) + tuple(f'A{i:04d}' for i in range(1, 51)))
  train.train(workdir=str(tmp / 'run'), dataset=data, model_config=TINY,
              id_scheme=RandomCodeIds(num_levels=2),
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=5),
              mesh_fn=lambda: partitioning.make_mesh(-1, 1, 1), batch_size=32,
              num_train_steps=10, eval_every_steps=10, checkpoint_every_steps=10,
              report_unconstrained=False, input_pipeline='numpy')
  directory = export.export(str(tmp / 'run'), platforms=('cpu',))
  app = serve.make_app(directory, max_batch=16, window_ms=20, max_queue=64,
                       max_body_bytes=4096)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='error'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  yield f'http://127.0.0.1:{port}', artifact.Artifact(directory), data
  server.should_exit = True
  thread.join(10)


def _history_row(items, width=20):
  row = np.zeros((1, width), np.int32)
  row[0, :len(items)] = items[-width:]
  return row


def _recommend_equals_the_artifact_and_maps_external_ids(served):
  url, art, data = served
  history = [3, 17, 8]
  r = httpx.post(f'{url}/v1/recommend',
                 json={'history': [f'A{i:04d}' for i in history], 'k': 5})
  assert r.status_code == 200, r.text
  got = r.json()
  items, scores = art(_history_row(history))
  want = [f'A{i:04d}' for i in items[0, :5] if i > 0]
  assert got['items'] == want and got['unknown'] == [] and got['truncated'] == 0
  np.testing.assert_allclose(got['scores'], scores[0, :len(want)], rtol=1e-5)
  meta = httpx.get(f'{url}/v1/metadata').json()
  assert meta['manifest']['item_map'] == 'items.tsv'
  assert meta['limits']['load_to_first_answer_s'] < 60
  # Unknown ids are dropped and named; longer histories keep the most recent items.
  r = httpx.post(f'{url}/v1/recommend', json={'history': ['A0003', 'nope', 'A0017', 'A0008']})
  assert r.json()['unknown'] == ['nope'] and r.json()['items'][:5] == got['items']
  long = [f'A{(i % 50) + 1:04d}' for i in range(30)]
  assert httpx.post(f'{url}/v1/recommend', json={'history': long}).json()['truncated'] == 10


def _concurrent_requests_are_batched_and_answered_alike(served):
  url, art, data = served
  histories = [[(u * 7 + j) % 50 + 1 for j in range(1 + u % 6)] for u in range(48)]
  before = httpx.get(f'{url}/v1/metadata').json()['served']

  def ask(h):
    return httpx.post(f'{url}/v1/recommend', json={'history': [f'A{i:04d}' for i in h]},
                      timeout=60).json()['items']
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    got = list(pool.map(ask, histories))
  after = httpx.get(f'{url}/v1/metadata').json()['served']
  assert after['requests'] - before['requests'] == 48
  assert after['batches'] - before['batches'] < 48  # some requests shared a batch
  for h, g in zip(histories, got):
    items, _ = art(_history_row(h))
    assert g == [f'A{i:04d}' for i in items[0] if i > 0]


BAD = [
    (b'', 400), (b'{', 400), (b'not json', 400), (b'\xff\xfe', 400), (b'[]', 422),
    (b'"history"', 422), (b'42', 422), (b'null', 422), (b'{}', 422),
    (b'{"history": []}', 422), (b'{"history": null}', 422), (b'{"history": "A0001"}', 422),
    (b'{"history": {"a": 1}}', 422), (b'{"history": [null]}', 422),
    (b'{"history": [1.5]}', 422), (b'{"history": [true]}', 422),
    (b'{"history": [["A0001"]]}', 422), (b'{"history": ["zzz"]}', 422),
    (b'{"history": ["A9999", "B0001"]}', 422), (b'{"history": ["A0001"], "k": 0}', 422),
    (b'{"history": ["A0001"], "k": 11}', 422), (b'{"history": ["A0001"], "k": -3}', 422),
    (b'{"history": ["A0001"], "k": "5"}', 422), (b'{"history": ["A0001"], "k": 2.5}', 422),
    (b'{"history": ["A0001"], "k": true}', 422), (b'{"history": ["A0001"], "k": null}', 422),
    (b'{"history": ["A0001"], "extra": 1}', 422), (b'{"hist": ["A0001"]}', 422),
    (b'{"history": ["A0001"]' + b' ' * 5000 + b'}', 413),
    (json.dumps({'history': ['A0001'] * 2000}).encode(), 413),
    (b'{"history": ["A0001"], "k": 1e999}', 422),
]


def _bad_input_gets_a_message_and_the_server_stays_up(served):
  url, _, _ = served
  assert len(BAD) >= 30
  for body, status in BAD:
    r = httpx.post(f'{url}/v1/recommend', content=body,
                   headers={'content-type': 'application/json'})
    assert r.status_code == status, (body[:60], r.status_code, r.text)
    assert r.json()['error'], body[:60]
  assert httpx.get(f'{url}/v1/recommend').status_code == 405
  assert httpx.get(f'{url}/nope').status_code == 404
  assert httpx.get(f'{url}/healthz').json() == {'status': 'ok'}
  ok = httpx.post(f'{url}/v1/recommend', json={'history': ['A0001']})
  assert ok.status_code == 200 and ok.json()['items']


def test_served_artifact(served):
  """One served artifact (training and compiling it is the cost) for the three
  checks: answers, batching, bad input."""
  _recommend_equals_the_artifact_and_maps_external_ids(served)
  _concurrent_requests_are_batched_and_answered_alike(served)
  _bad_input_gets_a_message_and_the_server_stays_up(served)


def test_overload_is_refused_with_retry_after():
  b = serve.Batcher(lambda rows: (rows, rows), width=3, max_batch=4, max_queue=1)

  async def scenario():
    await b.start()
    b.task.cancel()  # nothing drains the queue
    first = asyncio.ensure_future(b.submit(np.zeros(3, np.int32)))
    await asyncio.sleep(0)
    with pytest.raises(serve.BadRequest) as e:
      await b.submit(np.zeros(3, np.int32))
    first.cancel()
    return e.value
  err = asyncio.run(scenario())
  assert err.status == 503 and err.headers == {'Retry-After': '1'}
  assert b.padded_size(3) == 4 and b.sizes == [1, 2, 4]


def test_server_and_artifact_import_no_training_stack():
  code = ('import sys, genrec.recommendation.serve; '
          'print([m for m in ("flax", "optax", "orbax", "seqio", "tensorflow", "gin") '
          'if m in sys.modules])')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=REPO_ROOT, check=True).stdout
  assert out.strip() == '[]'
