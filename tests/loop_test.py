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
