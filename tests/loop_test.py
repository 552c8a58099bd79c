"""The run loop's pieces: data order, dispatch window, fixed-budget loop."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from genrec import loop


def test_epoch_batcher_is_a_pure_function_of_seed_and_step():
  a, b = loop.EpochBatcher(10, 4, seed=3), loop.EpochBatcher(10, 4, seed=3)
  assert a.steps_per_epoch == 2
  first = [a.indices(s).tolist() for s in range(4)]
  assert [b.indices(s).tolist() for s in (3, 0, 2, 1)] == [first[3], first[0], first[2],
                                                           first[1]]
  assert len(set(first[0] + first[1])) == 8  # no repeats within an epoch
  with pytest.raises(ValueError, match='different data settings'):
    a.check_resumable(loop.EpochBatcher(10, 5, 3).state(4), 'ckpt')
  with pytest.raises(ValueError, match='exceeds the 3 training examples'):
    loop.EpochBatcher(3, 4, 0)


def test_dispatch_window_waits_for_the_oldest_step():
  waited = []

  class Fake:
    def __init__(self, i):
      self.i = i

    def block_until_ready(self):
      waited.append(self.i)
      return self

  w = loop.DispatchWindow(size=2)
  for i in range(5):
    w.push(Fake(i))
  assert waited == [0, 1, 2]  # never more than 2 in flight
  w.drain()
  assert waited == [0, 1, 2, 3, 4]


def test_many_collective_steps_on_eight_cpu_devices_do_not_deadlock(tmp_path):
  """Regression: an unbounded run-ahead of data-parallel steps on the fake
  8-device CPU mesh filled XLA:CPU's in-flight queue (32 per device), blocked
  the client's launch threads and aborted in the all-reduce rendezvous
  ("only 7 of them arrived") within ~100 steps. 300 steps with no result read
  in between must finish."""
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ('data',))
  rows, repl = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  x = jax.device_put(np.random.default_rng(0).random((64, 256), np.float32), rows)

  def loss_fn(w):
    h = x
    for i in range(3):
      h = jnp.tanh(h @ w[i])
    return (h ** 2).mean()

  @jax.jit
  def step(state):
    loss, g = jax.value_and_grad(loss_fn)(state['w'])  # the gradient is an all-reduce
    return {'w': state['w'] - 0.1 * g}, loss

  w0 = {'w': jax.device_put(jnp.full((3, 256, 256), 0.01, jnp.float32), repl)}
  abstract = {'w': jax.ShapeDtypeStruct((3, 256, 256), jnp.float32, sharding=repl)}
  batcher = loop.EpochBatcher(64, 8, 0)
  state, _, loss = loop.train_fixed_budget(str(tmp_path), 'toy', 300, batcher, abstract,
                                           lambda: w0, lambda w, s: step(w),
                                           log_every_steps=10_000)
  assert np.isfinite(loss) and loss < float(loss_fn(w0['w']))
  # A second run restores the final state instead of training.
  again, _, loss2 = loop.train_fixed_budget(str(tmp_path), 'toy', 300, batcher, abstract,
                                            lambda: pytest.fail('trained again'),
                                            lambda w, s: step(w))
  assert loss2 == loss
  np.testing.assert_array_equal(np.asarray(again['w']), np.asarray(state['w']))


def test_settings_added_to_genrec_since_a_run_started_are_no_change_at_their_default(tmp_path):
  loop.check_run_settings(str(tmp_path), {'model': {'d': 8}, 'lr': 0.1})
  # A later genrec gives the model a field the saved record lacks.
  defaults = {'model': {'d': 16, 'new_field': ''}}
  loop.check_run_settings(str(tmp_path), {'model': {'d': 8, 'new_field': ''}, 'lr': 0.1},
                          defaults=defaults)
  with pytest.raises(ValueError, match=r"model.new_field: None -> 'x'"):
    loop.check_run_settings(str(tmp_path), {'model': {'d': 8, 'new_field': 'x'}, 'lr': 0.1},
                            defaults=defaults)
  with pytest.raises(ValueError, match=r'model.d: 8 -> 16'):
    loop.check_run_settings(str(tmp_path), {'model': {'d': 16, 'new_field': ''}, 'lr': 0.1},
                            defaults=defaults)


def test_command_line_reads_back_as_typed():
  """The command recorded with results: main.py and `python -m` modules by
  name, gin bindings quoted so a shell gives the same arguments back."""
  import shlex
  from genrec import tables
  argv = ['/repo/main.py', "--gin_bindings=DATA_DIR='../shared/data'", '--workdir=runs/a b']
  line = tables.command_line(argv)
  assert line == ('python main.py "--gin_bindings=DATA_DIR=\'../shared/data\'" '
                  '"--workdir=runs/a b"')
  assert shlex.split(line)[2:] == argv[1:]
  assert tables.command_line(['/x/site-packages/genrec/benchmarks/tiger_table.py', '--stem=t']
                             ) == 'python -m genrec.benchmarks.tiger_table --stem=t'


def test_rewritten_csv_keeps_its_column_order(tmp_path):
  """A table written again (e.g. --table_keep with a rerun row first) keeps the
  CSV's earlier column order; columns no row has any more are dropped, new
  ones come last."""
  import csv
  from genrec import tables
  tables.write('', [{'method': 'a', 'x': 1, 'gone': 2}], str(tmp_path), 't')
  tables.write('', [{'y': 3, 'x': 4, 'method': 'b'}, {'method': 'c'}], str(tmp_path), 't')
  with open(tmp_path / 't.csv', newline='') as f:
    assert list(csv.reader(f)) == [['method', 'x', 'y'], ['b', '4', '3'], ['c', '', '']]


def _toy_budget(tmp_path, step_fn, steps=20, **kw):
  repl = NamedSharding(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1]), P())
  abstract = {'w': jax.ShapeDtypeStruct((4,), jnp.float32, sharding=repl)}
  init = lambda: {'w': jax.device_put(jnp.zeros(4, jnp.float32), repl)}
  return loop.train_fixed_budget(str(tmp_path), 'toy', steps, loop.EpochBatcher(40, 4, 0),
                                 abstract, init, step_fn, log_every_steps=5, **kw)


def test_fixed_budget_run_killed_mid_training_resumes_where_it_stopped(tmp_path):
  """Retrieval and ranking training checkpoint along the way (here: every
  step) and a second start continues from the newest checkpoint with the
  same steps, instead of starting over."""
  add = jax.jit(lambda w, s: {'w': w['w'] * 0.9 + s})
  calls = []

  def step(w, s):
    calls.append(s)
    if s == 13 and len(calls) == 14:
      raise KeyboardInterrupt('killed')
    return add(w, s), jnp.float32(s)
  with pytest.raises(KeyboardInterrupt):
    _toy_budget(tmp_path / 'a', step, checkpoint_every_seconds=1e-9)
  calls.clear()
  state, _, _ = _toy_budget(tmp_path / 'a', step, checkpoint_every_seconds=1e-9)
  assert calls[0] >= 10 and calls[-1] == 19  # resumed, not restarted
  want, _, _ = _toy_budget(tmp_path / 'b', lambda w, s: (add(w, s), jnp.float32(s)))
  np.testing.assert_allclose(np.asarray(state['w']), np.asarray(want['w']), rtol=1e-6)


def test_sigterm_saves_a_fixed_budget_run_at_a_step_boundary(tmp_path):
  import os
  import signal
  add = jax.jit(lambda w, s: {'w': w['w'] + s})

  def step(w, s):
    if s == 6:
      os.kill(os.getpid(), signal.SIGTERM)  # as a pod scheduler would
    return add(w, s), jnp.float32(s)
  with pytest.raises(loop.Preempted) as stopped:
    _toy_budget(tmp_path, step, checkpoint_every_seconds=0)
  assert stopped.value.code == 128 + signal.SIGTERM and 'same command' in str(stopped.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['7']
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
  state, _, _ = _toy_budget(tmp_path, lambda w, s: (add(w, s), jnp.float32(s)))
  assert float(state['w'][0]) == sum(range(20))


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  import json
  import os
  import socket
  import subprocess
  import time
  path = str(tmp_path / 'run.lock')
  with loop.RunLock(path):
    with pytest.raises(loop.RunDirectoryBusy, match=f'pid {os.getpid()} on host'):
      loop.RunLock(path).acquire()
  assert not os.path.exists(path)  # released
  dead = subprocess.Popen(['true'])
  dead.wait()
  with open(path, 'w') as f:  # a holder killed with -9 left its lock
    json.dump({'host': socket.gethostname(), 'pid': dead.pid, 'heartbeat': 0}, f)
  with loop.RunLock(path):
    assert json.load(open(path))['pid'] == os.getpid()
  with open(path, 'w') as f:  # another host, silent for an hour
    json.dump({'host': 'elsewhere', 'pid': 1, 'heartbeat': 0}, f)
  with loop.RunLock(path):
    pass
  with open(path, 'w') as f:  # another host, alive
    json.dump({'host': 'elsewhere', 'pid': 1, 'heartbeat': time.time()}, f)
  with pytest.raises(loop.RunDirectoryBusy, match='host elsewhere'):
    loop.RunLock(path).acquire()


def test_truncate_jsonl_keeps_each_step_once(tmp_path):
  path = tmp_path / 'log.jsonl'
  path.write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"step": 1')  # last line cut
  assert loop.truncate_jsonl(str(path), 10) == 2
  assert path.read_text() == '{"step": 5}\n{"step": 10}\n'


def test_fixed_budget_of_no_steps_saves_the_initial_state(tmp_path):
  """A run with nothing to train (e.g. documents added with no replay) still
  leaves a checkpoint of its state, which a second run restores."""
  state, _, loss = _toy_budget(tmp_path, lambda s, step: pytest.fail('trained'), steps=0)
  assert loss is None and (tmp_path / 'checkpoints' / '0').is_dir()
  again, _, _ = _toy_budget(tmp_path, lambda s, step: pytest.fail('trained'), steps=0)
  np.testing.assert_array_equal(np.asarray(again['w']), np.asarray(state['w']))


def test_a_restored_fixed_budget_run_reports_the_seconds_it_reported_when_trained(tmp_path):
  """The seconds a run returns are those its checkpoint holds (rounded alike),
  so the table row of a rerun that only evaluates equals the first run's
  (a row rounding 7.149 and 7.15 to one decimal differed)."""
  step = jax.jit(lambda s: {'w': s['w'] + 1.0})
  _, trained_s, _ = _toy_budget(tmp_path, lambda s, i: (step(s), jnp.float32(i)))
  _, restored_s, _ = _toy_budget(tmp_path, lambda s, i: pytest.fail('trained again'))
  assert restored_s == trained_s == round(trained_s, 2)
