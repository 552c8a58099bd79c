"""The run loop's pieces shared by every application: the data order, a
bounded dispatch window, progress lines, metric writers and the fixed-budget
train-or-restore loop.

Why a dispatch window: JAX dispatches jitted steps asynchronously, so a
Python loop that never reads a result runs ahead of the devices. On XLA:CPU
with several devices (the fake-device meshes of tests and of the multi-device
CPU runs) that is a deadlock, not just memory: each launch of a multi-device
program takes one client thread per device, and a launch that finds the
device's in-flight queue full (32 computations) *blocks that thread*. The
client's pool has max(cores, devices) threads, so once the loop is 32 steps
ahead the blocked launches hold threads that the running step's all-reduce
needs for its other participants; XLA then aborts with "Termination timeout
for all reduce ... Expected 8 threads to join the rendezvous, but only 7 of
them arrived". Keeping at most `DispatchWindow.size` steps in flight (two by
default, enough for the host to prepare the next step while the device runs
this one) keeps every launch non-blocking on every backend.
"""

import collections
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable

from absl import logging
import gin
import jax
import numpy as np

from genrec import checkpoints, partitioning, tables


# ---------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class EpochBatcher:
  """Global batches drawn from a fresh permutation each epoch.

  The batch of a step is a pure function of (seed, step), so the iterator's
  checkpointed state is the step alone and a resumed run sees exactly the
  batches the uninterrupted run would have seen.
  """
  num_examples: int
  batch_size: int
  seed: int

  def __post_init__(self):
    if self.num_examples < self.batch_size:
      raise ValueError(f'batch_size {self.batch_size} exceeds the {self.num_examples} '
                       'training examples; lower the batch size.')
    self.steps_per_epoch = self.num_examples // self.batch_size
    self._epoch, self._perm = -1, None

  def indices(self, step: int) -> np.ndarray:
    epoch, pos = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      self._epoch = epoch
    return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]

  def state(self, step: int) -> dict:
    return {'step': step, 'epoch': step // self.steps_per_epoch,
            'num_examples': self.num_examples, 'batch_size': self.batch_size,
            'seed': self.seed}

  def check_resumable(self, saved: dict, where: str) -> None:
    mine = self.state(saved['step'])
    diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
    if diff:
      raise ValueError(f'Checkpoint {where} was written with different data settings '
                       f'(saved, now): {diff}. Resume with the same data set and batch size, '
                       'or use a new --workdir.')


# ---------------------------------------------------------------------------
# Dispatch window
# ---------------------------------------------------------------------------
class DispatchWindow:
  """Keeps at most `size` asynchronously dispatched steps in flight.

  `push(x)` records an output of the step just dispatched (any small array,
  e.g. the loss) and, when more than `size` are recorded, waits for the
  oldest. See the module docstring for why this matters on XLA:CPU.
  """

  def __init__(self, size: int = 2):
    if size < 1:
      raise ValueError(f'DispatchWindow size must be >= 1, not {size}.')
    self.size = size
    self._pending = collections.deque()

  def push(self, output) -> None:
    self._pending.append(output)
    while len(self._pending) > self.size:
      jax.block_until_ready(self._pending.popleft())

  def drain(self) -> None:
    while self._pending:
      jax.block_until_ready(self._pending.popleft())


# ---------------------------------------------------------------------------
# Progress and writers
# ---------------------------------------------------------------------------
def fmt_time(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def fmt_metrics(m: dict[str, float]) -> str:
  return ' '.join(f'{k}={v:.4f}' for k, v in m.items())


class Progress:
  """The one progress line of every run: step, metrics, steps/s and ETA.

  A line is due every `log_every_steps` steps (the caller's period) and also
  once `every_seconds` have passed since the last one (`due`), so a slow run
  shows its rate and ETA within a minute of its start."""

  def __init__(self, total_steps: int, start_step: int = 0, name: str = '',
               every_seconds: float = 30.0):
    self.total, self.name, self.every_seconds = total_steps, name, every_seconds
    self._t, self._step = time.time(), start_step

  def due(self) -> bool:
    """Whether `every_seconds` have passed since the last line."""
    return 0 < self.every_seconds <= time.time() - self._t

  def log(self, step: int, values: dict[str, float], seconds_left: float | None = None
          ) -> float:
    """Logs the line for `step`; returns the steps/s since the last line.
    `seconds_left`: a time budget's remaining seconds, which caps the ETA."""
    now = time.time()
    rate = (step - self._step) / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    prefix = f'{self.name} ' if self.name else ''
    eta = (self.total - step) / max(rate, 1e-9)
    budget = ''
    if seconds_left is not None and seconds_left < eta:
      eta, budget = max(seconds_left, 0.0), ' (time budget)'
    logging.info('%sstep %d/%d %s | %.2f steps/s | ETA %s%s', prefix, step, self.total,
                 fmt_metrics(values), rate, fmt_time(eta), budget)
    return rate


def write_json(path: str, obj) -> None:
  """Atomically writes `obj` as JSON (process 0 only)."""
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def append_jsonl(path: str, obj) -> None:
  """Appends one JSON line (process 0 only)."""
  if jax.process_index() == 0:
    with open(path, 'a') as f:
      f.write(json.dumps(obj) + '\n')


def make_writer(logdir: str) -> 'EventWriter | NoTensorBoard':
  """The run's TensorBoard scalars (process 0; the other processes write none)."""
  if jax.process_index() > 0:
    return NoTensorBoard()
  return EventWriter(logdir)


class EventWriter:
  """TensorBoard scalars as an event file, written with the tensorboard
  package's protos and record format: no TensorFlow import (clu's and flax's
  writers import TensorFlow, about 7 s at every start, and are absent on
  hosts without it).

  The writer never logs the scalars itself: the progress and eval lines
  already show them once.
  """

  def __init__(self, logdir: str):
    # Imported here: tensorboard's protos are only needed once a run starts.
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer import record_writer
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.genrec'
    self.path = os.path.join(logdir, name)
    self._records = record_writer.RecordWriter(open(self.path, 'wb'))
    self._records.write(self._event(wall_time=time.time(),
                                    file_version='brain.Event:2').SerializeToString())

  def write_scalars(self, step: int, scalars: dict) -> None:
    values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._records.write(self._event(wall_time=time.time(), step=int(step),
                                    summary=self._summary(value=values)).SerializeToString())

  def flush(self) -> None:
    self._records.flush()


class NoTensorBoard:
  """The writer of processes other than 0: writes nothing."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    del step, scalars  # process 0 writes them

  def flush(self) -> None:
    pass


# ---------------------------------------------------------------------------
# The run directory's record: settings, config history, manifest
# ---------------------------------------------------------------------------
SETTINGS_FILE = 'run_settings.json'
# Set by main.py --allow_config_change (runs may also pass allow_change).
allow_config_change = False


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def callable_settings(fn) -> dict:
  """What defines a configured function (e.g. the optimizer): its name, its
  gin bindings, and for a plain Python function its defaults and constants
  (`lambda n: make_optimizer(n, learning_rate=3e-3)` records the 3e-3)."""
  out = {'fn': getattr(fn, '__qualname__', None) or type(fn).__name__}
  try:
    out.update({k: repr(v) for k, v in sorted(gin.get_bindings(fn).items())})
  except (ValueError, TypeError, AttributeError):  # not a gin configurable
    code = getattr(fn, '__code__', None)
    if code is not None:
      out['defaults'] = repr(fn.__defaults__)
      out['constants'] = repr([c for c in code.co_consts if isinstance(c, (int, float, str))])
  return out


def make_workdir(workdir: str) -> None:
  """Creates the run directory; a path that is a file is refused by name."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'The run directory {workdir!r} is an existing file, not a folder; '
                     'choose another --workdir.')
  os.makedirs(workdir, exist_ok=True)


def check_run_settings(workdir: str, settings: dict, allow_change: bool = False,
                       defaults: dict | None = None) -> None:
  """Compares the settings that give the saved steps their meaning (model,
  optimizer and schedule, identifiers, data, batch, seed, budget) with those of
  the run's earlier starts.

  The first start records them in run_settings.json. A later start with other
  values is refused with a message naming every difference, unless
  `allow_change` (or main.py --allow_config_change): then the change is
  appended to settings_changes.jsonl and the new values are recorded.
  A setting the saved record lacks (added to genrec since the run started)
  is no change when it holds its value in `defaults` (same nesting as
  `settings`): the run was trained with what that default does.

  Raises:
    ValueError: listing each changed setting (saved -> now) and the ways out.
  """
  path = os.path.join(workdir, SETTINGS_FILE)
  now = _flatten(json.loads(json.dumps(settings, default=str)))
  if not os.path.exists(path):
    write_json(path, now)
    return
  with open(path) as f:
    saved = json.load(f)
  added = _flatten(json.loads(json.dumps(defaults or {}, default=str)))
  diffs = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
           if saved.get(k) != now.get(k) and not (
               k not in saved and k in added and now.get(k) == added[k])}
  if not diffs:
    return
  lines = '\n'.join(f'  {k}: {a!r} -> {b!r}' for k, (a, b) in diffs.items())
  if not (allow_change or allow_config_change):
    raise ValueError(
        f'{workdir} was started with other settings; resuming would mix runs:\n{lines}\n'
        'Use a new --workdir, restore the settings, or pass --allow_config_change (main.py) '
        '/ allow_config_change=True to continue with the change recorded.')
  logging.warning('Continuing %s with changed settings (recorded in settings_changes.jsonl):'
                  '\n%s', workdir, lines)
  append_jsonl(os.path.join(workdir, 'settings_changes.jsonl'),
               {'time': _utc(), 'changes': {k: list(v) for k, v in diffs.items()}})
  write_json(path, now)


def _utc() -> str:
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def record_start(workdir: str, step: int) -> None:
  """One start of a run: the gin config of this start in config/ (one file per
  start, never overwritten; config.gin is the latest) and a manifest line
  (versions, devices, host, command, time, step) in run_manifest.jsonl."""
  if jax.process_index() > 0:
    return
  import gin
  import genrec
  folder = os.path.join(workdir, 'config')
  os.makedirs(folder, exist_ok=True)
  n = len([f for f in os.listdir(folder) if f.startswith('start_')]) + 1
  text = gin.config_str()
  with open(os.path.join(folder, f'start_{n:03d}_step{step}.gin'), 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'config.gin'), 'w') as f:
    f.write(text)
  append_jsonl(os.path.join(workdir, 'run_manifest.jsonl'), {
      'event': 'start', 'time': _utc(), 'step': step, 'genrec': genrec.__version__,
      'jax': jax.__version__, 'devices': partitioning.device_summary(),
      'processes': jax.process_count(), 'host': tables.host_summary(),
      'command': tables.command_line(), 'commit': tables.source_commit(),
      'config': f'config/start_{n:03d}_step{step}.gin'})


def record_end(workdir: str, step: int) -> None:
  append_jsonl(os.path.join(workdir, 'run_manifest.jsonl'),
               {'event': 'end', 'time': _utc(), 'step': step})


# ---------------------------------------------------------------------------
# Fixed-budget train-or-restore loop
# ---------------------------------------------------------------------------
def train_fixed_budget(workdir: str, name: str, num_train_steps: int, batcher: EpochBatcher,
                       abstract_state, init_fn: Callable[[], object],
                       step_fn: Callable[[object, int], tuple[object, jax.Array]],
                       log_every_steps: int = 200, settings: dict | None = None
                       ) -> tuple[object, float | None, float | None]:
  """Trains `num_train_steps` steps and checkpoints the final state in
  workdir/checkpoints, or restores that state when it is already there.

  For fixed-budget studies (document retrieval, ranking): a second run with
  the same workdir evaluates the saved model without training.

  Args:
    name: shown in the progress lines.
    batcher: the data order (its state is saved and checked on restore).
    abstract_state: the state's ShapeDtypeStructs with shardings (for restore).
    init_fn: () -> the initial state.
    step_fn: (state, step) -> (state, loss).
    settings: what defines the trained model (see `check_run_settings`);
      a workdir trained with other settings is refused instead of restored.

  Returns:
    (state, training seconds, final loss); the last two as saved, on restore.
  """
  make_workdir(workdir)
  if settings is not None:
    check_run_settings(workdir, settings | {'num_train_steps': num_train_steps})
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'), keep=1,
                                     best_metric=None)
  if manager.latest_step() == num_train_steps:
    state, saved = checkpoints.restore(manager, num_train_steps, abstract_state)
    batcher.check_resumable(saved, os.path.join(workdir, 'checkpoints'))
    manager.close()
    logging.info('%s: evaluating the checkpoint of %s', name, workdir)
    return state, saved.get('train_seconds'), saved.get('final_loss')
  state, loss, t0 = init_fn(), None, time.time()
  window, progress = DispatchWindow(), Progress(num_train_steps, name=name)
  for step in range(num_train_steps):
    state, loss_v = step_fn(state, step)
    window.push(loss_v)
    if (step + 1) % log_every_steps == 0 or step + 1 == num_train_steps:
      loss = float(loss_v)
      progress.log(step + 1, {'loss': loss})
  window.drain()
  train_s = time.time() - t0
  checkpoints.save(manager, num_train_steps, state,
                   batcher.state(num_train_steps) | {'train_seconds': train_s,
                                                     'final_loss': loss})
  manager.wait_until_finished()
  manager.close()
  return state, train_s, loss
