"""The HTTP server of exported models: answers equal the artifacts' (the
recommender's, the ranker's, and the two stages together), concurrent
requests are batched, bad input gets 4xx messages and never takes the server
down, and the server imports no training stack."""

import asyncio
import concurrent.futures
import configparser
import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from conftest import REPO_ROOT
import jax

from genrec import artifact, local_cluster, models, partitioning, serve, trainer
from genrec.data import sequences
from genrec.ids import RandomCodeIds, ResidualKMeansIds
from genrec.ranking import export as ranking_export, ranker
from genrec.recommendation import export, train

# Correctness checks, not latency ones: a request may arrive while the
# server's warm-up thread compiles, which on 2 loaded cores takes longer than
# httpx's default 5 s timeout.
HTTP = httpx.Client(timeout=120)

TINY = models.EncoderDecoderModel(models.EncoderDecoderConfig(
    d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1,
    dropout_rate=0.0))


@pytest.fixture
def served(tmp_path):
  """A tiny recommender and a tiny ranker trained on the same data with
  external ids (A0001...), exported, served together on loopback."""
  tmp = tmp_path
  data = sequences.make_synthetic(num_users=120, num_items=50, seed=0)
  data = dataclasses.replace(data, item_keys=('',) + tuple(f'A{i:04d}' for i in range(1, 51)))
  train.train(workdir=str(tmp / 'run'), dataset=data, model=TINY,
              id_scheme=RandomCodeIds(num_levels=2),
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=5),
              mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]), batch_size=32,
              num_train_steps=10, eval_every_steps=10, checkpoint_every_steps=10,
              report_unconstrained=False, input_pipeline='numpy')
  directory = export.export(str(tmp / 'run'), platforms=('cpu',), saved_model=False)
  ranker.train_and_evaluate(
      'sid_unigram', 128, str(tmp / 'ranker'), dataset=data,
      sid_scheme=ResidualKMeansIds(num_levels=2, codebook_size=8, dedup=False),
      config=ranker.RankerConfig(dim=8, mlp_dims=(16,)), num_train_steps=20, batch_size=32,
      eval_negatives=9, log_every_steps=20,
      mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  ranker_dir = ranking_export.export(str(tmp / 'ranker'), platforms=('cpu',), saved_model=False)
  app = serve.make_app(directory, max_batch=16, window_ms=20, max_queue=64,
                       max_body_bytes=4096, ranker=ranker_dir, max_candidates=32)
  port = local_cluster.free_port()
  server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='error'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  yield f'http://127.0.0.1:{port}', artifact.Artifact(directory), artifact.Artifact(ranker_dir)
  server.should_exit = True
  thread.join(10)


def _history_row(items, width=20):
  row = np.zeros((1, width), np.int32)
  row[0, :len(items)] = items[-width:]
  return row


def _recommend_equals_the_artifact_and_maps_external_ids(served):
  url, art, _ = served
  history = [3, 17, 8]
  r = HTTP.post(f'{url}/v1/recommend',
                 json={'history': [f'A{i:04d}' for i in history], 'k': 5, 'rerank': False})
  assert r.status_code == 200, r.text
  got = r.json()
  items, scores = art(_history_row(history))
  want = [f'A{i:04d}' for i in items[0, :5] if i > 0]
  assert got['items'] == want and got['unknown'] == [] and got['truncated'] == 0
  np.testing.assert_allclose(got['scores'], scores[0, :len(want)], rtol=1e-5)
  meta = HTTP.get(f'{url}/v1/metadata').json()
  assert meta['manifest']['item_map'] == 'items.tsv'
  assert meta['limits']['load_to_first_answer_s'] < 60
  # Unknown ids are dropped and named; longer histories keep the most recent items.
  r = HTTP.post(f'{url}/v1/recommend', json={'history': ['A0003', 'nope', 'A0017', 'A0008'],
                                               'rerank': False})
  assert r.json()['unknown'] == ['nope'] and r.json()['items'][:5] == got['items']
  long = [f'A{(i % 50) + 1:04d}' for i in range(30)]
  assert HTTP.post(f'{url}/v1/recommend', json={'history': long}).json()['truncated'] == 10


def _two_stages_and_rank_equal_the_artifacts(served):
  url, art, ranker_art = served
  history = [3, 17, 8]
  names = [f'A{i:04d}' for i in history]
  # Two stages: the generated items, re-ordered by the ranker's logits.
  got = HTTP.post(f'{url}/v1/recommend', json={'history': names, 'k': 4}).json()
  items, beam_scores = art(_history_row(history))
  generated = items[0][items[0] > 0]
  logits, = ranker_art(_history_row(history), generated[None])
  # The returned items are the best generated ones by the ranker (items that
  # share a Semantic ID tie; any order among ties is right).
  best = np.sort(logits[0])[::-1][:4]
  np.testing.assert_allclose(got['scores'], best, rtol=1e-5, atol=1e-5)
  where = {f'A{i:04d}': n for n, i in enumerate(generated)}
  for name, score, beam_score in zip(got['items'], got['scores'], got['generation_scores']):
    np.testing.assert_allclose(score, logits[0, where[name]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(beam_score, beam_scores[0, where[name]], rtol=1e-5)
  # The ranker alone: candidates best first; unknown ones dropped and named.
  candidates = [5, 9, 40, 2, 33]
  got = HTTP.post(f'{url}/v1/rank', json={
      'history': names, 'candidates': [f'A{i:04d}' for i in candidates] + ['zzz']}).json()
  logits, = ranker_art(_history_row(history), np.array([candidates]))
  want = dict(zip([f'A{i:04d}' for i in candidates], logits[0]))
  assert sorted(got['items']) == sorted(want) and got['unknown'] == ['zzz']
  np.testing.assert_allclose(got['scores'], [want[i] for i in got['items']], rtol=1e-5,
                             atol=1e-5)
  assert got['scores'] == sorted(got['scores'], reverse=True)
  for body in ({'history': names}, {'history': names, 'candidates': []},
               {'history': names, 'candidates': ['zzz']},
               {'history': names, 'candidates': ['A0001'] * 33},
               {'history': names, 'candidates': 'A0001'},
               {'history': names, 'candidates': ['A0001'], 'k': 3},
               {'history': names, 'rerank': 'yes'}):
    path = '/v1/recommend' if 'rerank' in body else '/v1/rank'
    r = HTTP.post(f'{url}{path}', json=body)
    assert r.status_code == 422 and r.json()['error'], (body, r.text)


def _concurrent_requests_are_batched_and_answered_alike(served):
  url, art, _ = served
  histories = [[(u * 7 + j) % 50 + 1 for j in range(1 + u % 6)] for u in range(48)]
  before = HTTP.get(f'{url}/v1/metadata').json()['served']

  def ask(h):
    return HTTP.post(f'{url}/v1/recommend', json={'history': [f'A{i:04d}' for i in h],
                                                   'rerank': False}).json()['items']
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    got = list(pool.map(ask, histories))
  after = HTTP.get(f'{url}/v1/metadata').json()['served']
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
    (b'{"history": ' + b'[' * 1500 + b']' * 1500 + b'}', 400),  # nested too deeply
]


def _bad_input_gets_a_message_and_the_server_stays_up(served):
  url, _, _ = served
  assert len(BAD) >= 30
  for body, status in BAD:
    r = HTTP.post(f'{url}/v1/recommend', content=body,
                   headers={'content-type': 'application/json'})
    assert r.status_code == status, (body[:60], r.status_code, r.text)
    assert r.json()['error'], body[:60]
  assert HTTP.get(f'{url}/v1/recommend').status_code == 405
  assert HTTP.get(f'{url}/nope').status_code == 404
  assert HTTP.get(f'{url}/healthz').json() == {'status': 'ok'}
  ok = HTTP.post(f'{url}/v1/recommend', json={'history': ['A0001']})
  assert ok.status_code == 200 and ok.json()['items']


def test_served_artifacts(served):
  """One served pair of artifacts (training and compiling them is the cost) for
  the checks: answers, two stages and ranking, batching, bad input."""
  _recommend_equals_the_artifact_and_maps_external_ids(served)
  _two_stages_and_rank_equal_the_artifacts(served)
  _concurrent_requests_are_batched_and_answered_alike(served)
  _bad_input_gets_a_message_and_the_server_stays_up(served)


def test_overload_is_refused_with_retry_after():
  b = serve.Batcher(lambda rows: (rows, rows), ((3,),), max_batch=4, max_queue=1)

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


def test_waiting_requests_join_one_batch_after_the_window():
  calls = []

  def fn(rows):
    calls.append(len(rows))
    return (rows[:, 0],)
  b = serve.Batcher(fn, ((3,),), max_batch=16, window_s=0.0)

  async def scenario():
    await b.start()
    # Ten requests already waiting when the batcher looks: all in one batch,
    # although the (zero) window is over.
    got = await asyncio.gather(*(b.submit(np.full(3, i, np.int32)) for i in range(10)))
    b.task.cancel()
    return got
  got = asyncio.run(scenario())
  assert [int(g[0]) for g in got] == list(range(10))
  assert calls == [16] and b.batches == 1 and b.rows == 10


def test_server_and_artifact_import_no_training_stack():
  code = ('import sys, genrec.serve; '
          'print([m for m in ("flax", "optax", "orbax", "seqio", "tensorflow", "gin") '
          'if m in sys.modules])')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=REPO_ROOT, check=True).stdout
  assert out.strip() == '[]'


def _requirements(text: str) -> set[str]:
  names = set()
  for line in text.splitlines():
    line = line.split('#')[0].split(';')[0].strip()
    if line:
      names.add(re.split(r'[<>=\[ ]', line)[0].lower().replace('_', '-'))
  return names


def test_the_serve_install_has_what_the_server_imports_and_no_training_stack():
  """Every module the server (and the SEAL retriever) imports comes from the
  standard library or a distribution of the base install + the serve extra,
  and none of those is a training package."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  extras = cfg['options.extras_require']
  serving = _requirements(cfg['options']['install_requires']) | _requirements(extras['serve'])
  training = _requirements(extras['train'])
  assert not serving & {'flax', 'optax', 'orbax-checkpoint', 'seqio', 'tensorflow',
                        'tensorflow-datasets', 'gin-config', 'clu', 'absl-py'}
  assert training <= _requirements(extras['dev'])
  code = ('import sys, genrec.serve, genrec.seal, uvicorn, json; '
          'print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))')
  loaded = json.loads(subprocess.run([sys.executable, '-c', code], capture_output=True,
                                     text=True, cwd=REPO_ROOT, check=True).stdout)
  owners = importlib.metadata.packages_distributions()
  closure, todo = set(), list(serving)  # the serve install and what it pulls in
  while todo:
    name = todo.pop()
    if name in closure:
      continue
    closure.add(name)
    try:
      requires = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    todo += _requirements('\n'.join(r for r in requires if 'extra ==' not in r))
  outside = {}
  for module in loaded:
    if module in sys.stdlib_module_names or module.startswith('_') or module in (
        'genrec', 'etils', 'filelock', 'pygments'):  # the last three: jax uses them if present
      continue
    dists = {d.lower().replace('_', '-') for d in owners.get(module, [])}
    if dists and not dists & closure:
      outside[module] = sorted(dists)
  assert not outside, f'the server imports modules the serve install lacks: {outside}'


@pytest.mark.parametrize('body', [
    b'{"history": ' + b'[' * 30000 + b']' * 30000 + b'}',  # nested too deeply
    b'{"history": ["A0001"], "k": ' + b'9' * 5000 + b'}',  # over Python's int digits
])
def test_json_the_parser_cannot_hold_is_a_bad_request(body):
  with pytest.raises(serve.BadRequest) as e:
    serve.parse_json(body, {'history': True, 'k': False})
  assert e.value.status == 400 and 'not valid JSON' in str(e.value)
