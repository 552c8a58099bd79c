"""Multi-process jobs on this machine (`genrec.local_cluster`): several
processes with CPU collectives train, checkpoint and evaluate like one process
with as many devices."""

import json
import os
import shutil
import signal
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT
from genrec import local_cluster, partitioning
from genrec.recommendation import infer

# A short recommendation run: 3 steps on a small synthetic catalog, every
# step logged, one checkpoint and one evaluation at the end.
RUN = ['--gin_file=gin/runs/quickstart.gin',
       '--gin_bindings=train.train.num_train_steps=3',
       '--gin_bindings=train.train.eval_every_steps=3',
       '--gin_bindings=train.train.checkpoint_every_steps=3',
       '--gin_bindings=train.train.log_every_steps=1',
       '--gin_bindings=train.train.batch_size=32',
       '--gin_bindings=train.train.eval_batch_size=64',
       "--gin_bindings=train.train.input_pipeline='numpy'",
       '--gin_bindings=train.train.report_unconstrained=False',
       '--gin_bindings=sequences.make_synthetic.num_users=64',
       '--gin_bindings=sequences.make_synthetic.num_items=30']


def _job(workdir, processes: int, devices: int, extra=(), run=True, **kw
         ) -> local_cluster.Job:
  """A job of main.py with `extra` arguments (after the recommendation run's
  RUN unless run=False)."""
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)  # the gin files' paths are relative to the checkout
  try:
    return local_cluster.run([*(RUN if run else ()), *extra, f'--workdir={workdir}'],
                             processes, devices,
                             str(workdir / 'local_cluster'), timeout_s=600, echo=False,
                             **{'grace_s': 60, **kw})
  finally:
    os.chdir(cwd)


def _log(workdir, i=0) -> str:
  return (workdir / 'local_cluster' / f'process_{i}.log').read_text()


def _losses(workdir) -> list[float]:
  with open(workdir / 'train_log.jsonl') as f:
    return [r['loss'] for r in map(json.loads, f)]


def _params(workdir) -> list[np.ndarray]:
  *_, params, _ = infer.load_run(str(workdir),
                                 mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path):
  """A 1-process x 4-device run, and a 2-process x 2-device job that resumes
  its step-2 checkpoint: the checkpoint restores in the other layout, the
  2-process step 3 has the 1-process loss, and the evaluation its metrics;
  the 2-process checkpoint restores in this process with the 1-process run's
  parameters."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  every_step = ['--gin_bindings=train.train.checkpoint_every_steps=1']
  assert _job(one, 1, 4, every_step).ok, _log(one)[-3000:]
  shutil.copytree(one, two, ignore=shutil.ignore_patterns('local_cluster'))
  shutil.rmtree(two / 'checkpoints' / '3')
  for name in ('results.json', 'results_history.jsonl', 'train_log.jsonl'):
    (two / name).unlink()
  assert _job(two, 2, 2, every_step).ok, _log(two, 1)[-3000:]
  assert 'Process 1/2' in _log(two, 1) and 'Process 0/2' in _log(two, 0)
  assert 'Resuming at step 2' in _log(two, 0)
  assert len(_losses(one)) == 3 and len(_losses(two)) == 1
  np.testing.assert_allclose(_losses(two), _losses(one)[-1:], rtol=1e-5, atol=1e-6)
  for a, b in zip(_params(two), _params(one)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Process 0 alone writes the run's results; the metrics agree.
  r1, r2 = (json.loads((w / 'results.json').read_text()) for w in (one, two))
  assert r2['test'] == pytest.approx(r1['test'], abs=1e-6)


def test_a_failed_process_stops_the_job_with_its_name(tmp_path):
  # Process 1 fails at once while process 0 would run for ten minutes: the
  # launcher names process 1 and stops process 0 instead of waiting.
  job = local_cluster.run(['-c', 'import sys, time\n'
                           'if "--process_id=1" in sys.argv: sys.exit(3)\n'
                           'time.sleep(600)'], 2, 1, str(tmp_path), grace_s=1,
                          timeout_s=120, echo=False, program=(sys.executable,))
  assert job.failed == 1 and job.codes[1] == 3
  assert job.codes[0] < 0  # killed after the grace period


def _signal_process_1(workdir, text: str, sig: int, record: dict):
  """A `local_cluster.run(started=...)` callback: sends `sig` to process 1 once
  its log shows `text`, and records the time in record['at']."""
  def started(procs):
    def watch():
      log = workdir / 'local_cluster' / 'process_1.log'
      while procs[1].poll() is None:
        if log.exists() and text in log.read_text():
          record['at'] = time.time()
          procs[1].send_signal(sig)
          return
        time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()
  return started


def test_a_killed_process_stops_the_others_within_the_heartbeat_timeout(tmp_path):
  """SIGKILL one of two training processes: the other is told by JAX's
  distributed runtime and exits with an error instead of hanging in a
  collective (the launcher's own grace period is longer than the test)."""
  killed = {}
  # Once process 1 has built its model and is about to train.
  kill_process_1 = _signal_process_1(tmp_path, 'Model: ', signal.SIGKILL, killed)

  job = _job(tmp_path, 2, 1, ['--gin_bindings=train.train.num_train_steps=100000',
                              '--gin_bindings=train.train.checkpoint_every_steps=1',
                              '--heartbeat_timeout_s=10'],
             grace_s=300, started=kill_process_1)
  assert 'at' in killed, _log(tmp_path)[-3000:]
  assert job.failed == 1 and job.codes[1] == -signal.SIGKILL
  assert job.codes[0] != 0
  assert job.ended[0] - killed['at'] < 60, (job.ended[0] - killed['at'], _log(tmp_path)[-3000:])


def test_retrieval_and_ranking_modes_run_with_two_processes(tmp_path):
  """SEAL (its FM-index constraint answers each process's own rows) and the
  ranker, each as a 2-process job; process 0 writes the tables."""
  root = tmp_path / 'data' / 'toy'
  (root / 'qrels').mkdir(parents=True)
  docs = [{'_id': f'd{i}', 'title': f'topic{i} subject{i}',
           'text': f'topic{i} subject{i} ' + ' '.join(f'w{(i * j) % 17}' for j in range(10))}
          for i in range(12)]
  (root / 'corpus.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs))
  (root / 'queries.jsonl').write_text(''.join(
      json.dumps({'_id': f'q{i}', 'text': f'topic{i} subject{i}'}) + '\n' for i in range(12)))
  for split, parity in (('train', 0), ('test', 1)):
    (root / 'qrels' / f'{split}.tsv').write_text('query-id\tcorpus-id\tscore\n' + ''.join(
        f'q{i}\td{i}\t1\n' for i in range(parity, 12, 2)))
  retrieval = tmp_path / 'retrieval'
  job = _job(retrieval, 2, 1, [
      '--gin_file=gin/runs/retrieval.gin', '--gin_file=gin/retrieval/cpu_smoke.gin',
      "--gin_bindings=COLLECTION='toy'", f"--gin_bindings=DATA_DIR='{tmp_path / 'data'}'",
      "--gin_bindings=METHODS=('seal',)", '--gin_bindings=run.run.vocab_size=100',
      '--gin_bindings=docgen.train_and_evaluate.num_train_steps=5',
      '--gin_bindings=docgen.train_and_evaluate.batch_size=8',
      '--gin_bindings=docgen.train_and_evaluate.input_len=16',
      '--gin_bindings=run.run.dev_fraction=0.0'], run=False)
  assert job.ok, _log(retrieval, 1)[-3000:]
  row = json.loads((retrieval / 'seal' / 'row.json').read_text())
  assert row['queries'] == 6 and '2 x cpu' in row['training'], row
  # The ranker tensor-parallel over the two processes: its table's rows split
  # across them, each feeding the whole (replicated) batch; it scores like one
  # process with two devices.
  ranking = tmp_path / 'ranking'
  bindings = ["DATASETS=('synthetic',)", "VARIANTS=('sid_unigram',)", 'TABLE_ROWS=(64,)',
              'ids.ResidualKMeansIds.codebook_size=8', 'ranker.RankerConfig.dim=8',
              'ranker.RankerConfig.mlp_dims=(16,)', 'ranker.train_and_evaluate.num_train_steps=5',
              'ranker.train_and_evaluate.batch_size=64',
              'ranker.train_and_evaluate.eval_negatives=19']
  job = _job(ranking, 2, 1, ['--gin_file=gin/runs/ranking.gin',
                             '--gin_file=gin/sharding/tensor.gin',
                             *[f'--gin_bindings={b}' for b in bindings]], run=False)
  assert job.ok, _log(ranking, 1)[-3000:]
  row = json.loads((ranking / 'synthetic' / 'sid_unigram_64' / 'row.json').read_text())
  assert 0 <= row['all/auc'] <= 1 and (ranking / 'sid_ranking.md').exists()
  import gin  # pylint: disable=g-import-not-at-top
  from genrec.ranking import ranker  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.add_config_file_search_path(REPO_ROOT)
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO_ROOT, 'gin/ranking/sid_ranking.gin')],
        bindings[3:] + ['partitioning.make_mesh.data=1', 'partitioning.make_mesh.model=2'])
    one = ranker.train_and_evaluate('sid_unigram', 64, str(tmp_path / 'one'), dataset='synthetic')
  finally:
    gin.clear_config()
  for key in ('final_loss', 'all/auc', 'all/logloss', 'all/recall@10'):
    assert row[key] == pytest.approx(one[key], abs=2e-4), key


def test_sigterm_to_one_process_stops_the_job_at_one_saved_step(tmp_path):
  """A pod scheduler's SIGTERM reaches one process of two: the processes
  agree on the step (every 10 steps), save its checkpoint and exit 143; the
  same command resumes from it and finishes."""
  sent = {}
  term_process_1 = _signal_process_1(tmp_path, 'step 12/', signal.SIGTERM, sent)

  extra = ['--gin_bindings=train.train.num_train_steps=40',
           '--gin_bindings=train.train.eval_every_steps=40',
           '--gin_bindings=train.train.checkpoint_every_steps=40']
  job = _job(tmp_path, 2, 1, extra, grace_s=120, started=term_process_1)
  assert 'at' in sent, _log(tmp_path)[-3000:]
  assert job.codes == [128 + signal.SIGTERM] * 2, (job.codes, _log(tmp_path, 1)[-3000:])
  end = json.loads((tmp_path / 'run_manifest.jsonl').read_text().splitlines()[-1])
  assert end['stopped_by'] == 'SIGTERM' and end['step'] % 10 == 0
  assert os.listdir(tmp_path / 'checkpoints') == [str(end['step'])]
  shutil.rmtree(tmp_path / 'local_cluster')
  again = _job(tmp_path, 2, 1, extra)
  assert again.codes == [0, 0], _log(tmp_path)[-3000:]
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['resumed_from_step'] == end['step'] and results['last_step'] == 40
