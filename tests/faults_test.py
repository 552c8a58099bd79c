"""What pods and people do to run folders, through main.py on the quickstart
model: two starts on one folder, SIGTERM mid-run, a finished run whose
checkpoints were deleted, a second export of another step. (A kill -9 during
a checkpoint save: launch_test.test_kill_9_while_checkpointing_then_resume.)
Each asserts the records afterwards."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import FAST_COMPILE, REPO_ROOT

RUN = ['--gin_file=gin/runs/quickstart.gin',
       '--gin_bindings=train.train.num_train_steps=60',
       '--gin_bindings=train.train.eval_every_steps=30',
       '--gin_bindings=train.train.checkpoint_every_steps=10',
       '--gin_bindings=train.train.log_every_steps=5',
       '--gin_bindings=sequences.make_synthetic.num_users=200',
       '--gin_bindings=sequences.make_synthetic.num_items=60',
       "--gin_bindings=train.train.input_pipeline='numpy'",
       '--gin_bindings=train.train.report_unconstrained=False']
EXPORT = ['--gin_file=gin/runs/export.gin', "--gin_bindings=export.export.platforms=('cpu',)",
          '--gin_bindings=export.export.saved_model=False']
ENV = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}  # one CPU device, as a user starts it


def _cmd(*args) -> list[str]:
  return [sys.executable, os.path.join(REPO_ROOT, 'main.py'), *args]


def _run(*args) -> subprocess.CompletedProcess:
  return subprocess.run(_cmd(*args), cwd=REPO_ROOT, capture_output=True, text=True, env=ENV,
                        timeout=600)


def _lines(path) -> list[dict]:
  return [json.loads(line) for line in open(path)]


def _wait_for_checkpoint(proc, ckpt, step: int) -> None:
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if ckpt.exists() and any(d.isdigit() and int(d) >= step for d in os.listdir(ckpt)):
      return
    time.sleep(0.05)
  raise AssertionError(f'no checkpoint of step {step} appeared (rc {proc.poll()})')


def test_second_start_is_refused_sigterm_saves_and_the_same_command_resumes(tmp_path):
  run, ref = tmp_path / 'run', tmp_path / 'ref'
  first = subprocess.Popen(_cmd(*RUN, f'--workdir={run}'), cwd=REPO_ROOT, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(first, run / 'checkpoints', 10)
    # Paused (its lock held: the process lives), so that it cannot finish its
    # 60 steps while the second start below loads, however slow the machine.
    first.send_signal(signal.SIGSTOP)
    # A second start on the same folder is refused, naming the holder; no traceback.
    second = _run(*RUN, f'--workdir={run}')
    assert second.returncode != 0
    assert f'in use by another run: pid {first.pid}' in second.stderr, second.stderr[-2000:]
    assert 'Traceback' not in second.stderr
    # SIGTERM: a checkpoint at the next step boundary, the end record, a message, rc 143.
    first.send_signal(signal.SIGTERM)  # pending until the process continues
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
  finally:
    first.kill()
  assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert 'Run the same command to resume' in err
  end = _lines(run / 'run_manifest.jsonl')[-1]
  assert end['event'] == 'end' and end['stopped_by'] == 'SIGTERM'
  assert str(end['step']) in os.listdir(run / 'checkpoints')
  assert not (run / 'run.lock').exists() and not (run / 'results.json').exists()
  # The same command resumes and ends as an uninterrupted run does; every step logged once.
  resumed = _run(*RUN, f'--workdir={run}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  uninterrupted = _run(*RUN, f'--workdir={ref}')
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  got, want = (json.loads((d / 'results.json').read_text()) for d in (run, ref))
  assert got['resumed_from_step'] == end['step']
  assert got['test'] == want['test'] and got['validation'] == want['validation']
  steps = [line['step'] for line in _lines(run / 'train_log.jsonl')]
  assert steps == [line['step'] for line in _lines(ref / 'train_log.jsonl')]
  assert [e['step'] for e in _lines(run / 'eval_history.jsonl')] == [30, 60]

  # A finished run whose checkpoints were deleted is refused; its results stay.
  results = (run / 'results.json').read_text()
  for step in os.listdir(run / 'checkpoints'):
    subprocess.run(['rm', '-rf', str(run / 'checkpoints' / step)], check=True)
  again = _run(*RUN, f'--workdir={run}')
  assert again.returncode != 0 and 'no readable checkpoint' in again.stderr, again.stderr[-2000:]
  assert 'train.train.retrain=True' in again.stderr and 'Traceback' not in again.stderr
  assert (run / 'results.json').read_text() == results

  # Export never replaces the serving directory of another step without REPLACE.
  ckpts = sorted(int(d) for d in os.listdir(ref / 'checkpoints') if d.isdigit())
  exported = _run(*EXPORT, f'--workdir={ref}', f'--gin_bindings=STEP={ckpts[-1]}')
  assert exported.returncode == 0, exported.stderr[-3000:]
  manifest = (ref / 'serving' / 'manifest.json').read_text()
  other = _run(*EXPORT, f'--workdir={ref}', f'--gin_bindings=STEP={ckpts[0]}')
  assert other.returncode != 0 and f'step {ckpts[-1]}' in other.stderr, other.stderr[-2000:]
  assert 'REPLACE=True' in other.stderr
  assert (ref / 'serving' / 'manifest.json').read_text() == manifest
