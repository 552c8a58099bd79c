"""The run loop's pieces shared by every application: the data order, a
bounded dispatch window, progress lines, metric writers and the one training
loop (`run_steps`), with its fixed-budget train-or-restore form.

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
import signal
import socket
import threading
import time
from collections.abc import Callable

from absl import logging
import gin
import jax
from jax.experimental import multihost_utils
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

  def log(self, step: int, values: dict[str, float], seconds_left: float | None = None,
          steps_to_stop: int = 0) -> float:
    """Logs the line for `step`; returns the steps/s since the last line.
    `seconds_left`: a time budget's remaining seconds, which caps the ETA;
    `steps_to_stop`: the steps a run must still take before it can stop
    (it stops at an evaluation), which the capped ETA never undercuts."""
    now = time.time()
    rate = (step - self._step) / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    prefix = f'{self.name} ' if self.name else ''
    eta = (self.total - step) / max(rate, 1e-9)
    budget = ''
    if seconds_left is not None and seconds_left < eta:
      eta = max(seconds_left, 0.0, steps_to_stop / max(rate, 1e-9))
      budget = ' (time budget)'
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
                       defaults: dict | None = None,
                       legacy: Callable[[dict], dict] | None = None) -> None:
  """Compares the settings that give the saved steps their meaning (model,
  optimizer and schedule, identifiers, data, batch, seed, budget) with those of
  the run's earlier starts.

  The first start records them in run_settings.json. A later start with other
  values is refused with a message naming every difference, unless
  `allow_change` (or main.py --allow_config_change): then the change is
  appended to settings_changes.jsonl and the new values are recorded.
  A setting the saved record lacks (added to genrec since the run started)
  is no change when it holds its value in `defaults` (same nesting as
  `settings`): the run was trained with what that default does. `legacy`
  rewrites a saved record of an older form (flattened) into the current one
  (e.g. `models.legacy_settings`).

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
  if legacy is not None:
    saved = legacy(saved)
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


def record_end(workdir: str, step: int, **fields) -> None:
  """The `end` line of run_manifest.jsonl (`fields`: e.g. stopped_by='SIGTERM')."""
  append_jsonl(os.path.join(workdir, 'run_manifest.jsonl'),
               {'event': 'end', 'time': _utc(), 'step': step, **fields})


# ---------------------------------------------------------------------------
# One writer per run directory
# ---------------------------------------------------------------------------
LOCK_FILE = 'run.lock'
# A lock whose holder runs on another host is stale once its heartbeat (written
# every HEARTBEAT_S by the holder) is older than this.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 60.0


class RunDirectoryBusy(ValueError):
  """Another live process holds the run directory's lock."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _read_lock(path: str) -> dict | None:
  """The holder record of a lock file; {} when unreadable (a crash mid-write),
  None when there is none."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


class RunLock:
  """An exclusive lock on a run (or serving) directory for the life of a run.

  The lock is a file (`run.lock` in the folder, or the path given) holding
  its holder's host, pid, start time, command and a heartbeat that a thread
  refreshes every HEARTBEAT_S. A second start is refused with the holder's
  record; a stale lock (its pid dead on this host, or its heartbeat older
  than STALE_AFTER_S from another host) is taken over with a warning.
  Multi-process jobs: process 0 holds it; the others hold nothing.
  """

  def __init__(self, path: str, what: str = 'run directory'):
    self.path, self.what = path, what
    self._token = f'{socket.gethostname()}:{os.getpid()}:{time.time():.6f}'
    self._stop = threading.Event()
    self._thread = None

  def _record(self) -> dict:
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _utc(),
            'heartbeat': time.time(), 'command': tables.command_line(), 'token': self._token}

  def _write(self, exclusive: bool) -> None:
    data = json.dumps(self._record())
    if exclusive:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(fd, 'w') as f:
        f.write(data)
      return
    tmp = f'{self.path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      f.write(data)
    os.replace(tmp, self.path)

  def _stale_reason(self, holder: dict) -> str | None:
    if not holder:
      return 'its lock file is unreadable'
    if holder.get('host') == socket.gethostname():
      pid = int(holder.get('pid', -1))
      return None if pid > 0 and _pid_alive(pid) else f'process {pid} is no longer running'
    age = time.time() - float(holder.get('heartbeat', 0))
    if age > STALE_AFTER_S:
      return f'its heartbeat is {age / 60:.0f} minutes old'
    return None

  def acquire(self) -> 'RunLock':
    if jax.process_index() > 0:
      return self
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    for _ in range(3):
      try:
        self._write(exclusive=True)
        break
      except FileExistsError:
        pass
      holder = _read_lock(self.path)
      if holder is None:
        continue  # released meanwhile
      reason = self._stale_reason(holder)
      if reason is None:
        raise RunDirectoryBusy(
            f'{os.path.dirname(os.path.abspath(self.path))} is in use by another run: '
            f'pid {holder.get("pid")} on host {holder.get("host")}, started '
            f'{holder.get("started")} ({holder.get("command")}). Wait for it to end, stop '
            f'it, or use another {self.what}. (Lock file: {self.path}.)')
      logging.warning('Taking over the lock of %s from pid %s on %s, started %s: %s.',
                      self.path, holder.get('pid'), holder.get('host'),
                      holder.get('started'), reason)
      self._write(exclusive=False)
      time.sleep(0.05)  # two takers at once: the last replace wins, the other sees it
      if (_read_lock(self.path) or {}).get('token') == self._token:
        break
    else:
      raise RunDirectoryBusy(f'Could not take the lock {self.path}; another process keeps '
                             'taking it. Use another ' + self.what + '.')
    self._thread = threading.Thread(target=self._beat, daemon=True, name='genrec-lock')
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      holder = _read_lock(self.path)
      if not holder or holder.get('token') != self._token:
        logging.warning('The lock %s was taken by another process.', self.path)
        return
      try:
        self._write(exclusive=False)
      except OSError as e:  # a full disk must not kill the run
        logging.warning('Could not refresh the lock %s: %s', self.path, e)

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=5)
    self._thread = None
    if (_read_lock(self.path) or {}).get('token') == self._token:
      os.remove(self.path)

  def __enter__(self) -> 'RunLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# ---------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT stop training at a step boundary
# ---------------------------------------------------------------------------
class Preempted(SystemExit):
  """Training stopped on a signal after saving a checkpoint; the same
  command resumes. Its exit status is 128 + the signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(128 + signum)
    self.message, self.signum = message, signum

  def __str__(self) -> str:
    return self.message


class PreemptionWatch:
  """Turns SIGTERM (a preemptible VM, a pod scheduler, `timeout`) and SIGINT
  (Ctrl-C) into a request the training loop reads at its step boundaries
  (`requested(step)`), instead of dying mid-step with nothing saved.

  In a multi-process job every process must stop at the same step, so there
  the processes agree every `sync_every` steps (an all-gather of their flags;
  one process's signal stops them all), as JAX's preemption sync point does.
  A second signal of the same kind exits at once. Outside the main thread
  (no signal handlers possible) it watches nothing.
  """

  def __init__(self, sync_every: int = 10):
    self.sync_every = sync_every
    self.signum = None
    self._previous = {}

  def __enter__(self) -> 'PreemptionWatch':
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:  # asked twice: stop now
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.signum = signum
    logging.warning('Received %s: saving a checkpoint at the next step boundary, then '
                    'stopping (send it again to stop at once, without saving).',
                    signal.Signals(signum).name)

  def requested(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and np.any(flags):
      self.signum = int(np.max(flags))
    return bool(np.any(flags))

  def stop(self, workdir: str, step: int) -> Preempted:
    """Records the stop (`end` line of run_manifest.jsonl) and returns the
    exception to raise once the checkpoint of `step` is written."""
    name = signal.Signals(self.signum).name
    record_end(workdir, step, stopped_by=name)
    message = (f'Stopped by {name} at step {step}; its checkpoint is saved in {workdir}. '
               'Run the same command to resume.')
    logging.warning('%s', message)
    return Preempted(message, self.signum)


def truncate_jsonl(path: str, max_step: int) -> int:
  """Drops the lines of a step-keyed JSON-lines log past `max_step` (the
  steps a resumed run will log again), so that every step appears once.
  Returns how many were dropped. Process 0 only."""
  if jax.process_index() > 0 or not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      step = json.loads(line).get('step')
    except ValueError:  # a line cut by a crash
      continue
    if step is None or step <= max_step:
      keep.append(line if line.endswith('\n') else line + '\n')
  if len(keep) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(lines) - len(keep)


# ---------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a run evaluates, checkpoints, logs and stops.

  Attributes:
    num_train_steps: total optimizer steps.
    eval_every_steps: evaluation period (0: none during training); the last
      step is always an evaluation step.
    checkpoint_every_steps: checkpoint period besides evaluations (0: none).
    checkpoint_every_seconds: also a checkpoint at the first step this long
      after the previous one (0: none).
    log_every_steps: period of the progress line and the logged metrics (a
      line is also due every 30 s).
    steps_per_call: optimizer steps per `step_fn` call where the step is a
      multiple of it (a scan over that many batches: the same steps, for small
      models whose step is shorter than its dispatch from the host, e.g.
      SASRec on a GPU); the periods must be multiples of it.
    early_stopping_evals: stop once this many evaluations in a row have not
      raised `best_key` above its best (0: never).
    max_train_seconds: stop at the first evaluation after this many wall
      seconds of training steps, summed over invocations (0: no limit), for
      comparisons at equal wall-clock.
    stop_after_step: end this invocation after that step, checkpointed.
    best_key: the evaluation metric early stopping watches.
  """
  num_train_steps: int
  eval_every_steps: int = 0
  checkpoint_every_steps: int = 0
  checkpoint_every_seconds: float = 0.0
  log_every_steps: int = 100
  steps_per_call: int = 1
  early_stopping_evals: int = 0
  max_train_seconds: float = 0.0
  stop_after_step: int | None = None
  best_key: str = 'validation/ndcg@10'

  def evaluates_at(self, step: int) -> bool:
    return step == self.num_train_steps or bool(
        self.eval_every_steps and step % self.eval_every_steps == 0)

  def stop_reason(self, history_path: str | None, step: int, seconds: float) -> str | None:
    """Why training ends at the evaluation of `step` before its budget, if it does."""
    if self.early_stopping_evals > 0 and history_path and (
        evals_since_best(history_path, step, self.best_key) >= self.early_stopping_evals):
      return (f'{self.best_key} has not improved for {self.early_stopping_evals} '
              'evaluations')
    if 0 < self.max_train_seconds <= seconds:
      return f'{seconds:.0f} s of training reached max_train_seconds'
    return None


@dataclasses.dataclass
class Outcome:
  """How `run_steps` ended: the state and step reached, the training seconds
  (summed over invocations), the last logged metrics and why it stopped before
  `num_train_steps` ('early': early stopping or the time budget, 'asked':
  `stop_after_step`; None: it trained every step)."""
  state: object
  step: int
  train_seconds: float
  last_metrics: dict
  stopped: str | None = None


def run_steps(workdir: str, schedule: Schedule, manager, state, start: int,
              batcher: EpochBatcher,
              step_fn: Callable[[object, int, int], tuple[object, dict]],
              eval_fn: Callable[[object, int], dict] | None = None, *,
              name: str = '', train_seconds: float = 0.0, writer=None,
              log_path: str | None = None, history_path: str | None = None) -> Outcome:
  """The one training loop of every application: steps from `start`,
  periodic evaluation, checkpoints, progress lines, early stopping, a time
  budget and preemption (SIGTERM/SIGINT save a checkpoint at the next step and
  raise `Preempted`).

  Args:
    manager: the run's checkpoint manager (`checkpoints.open_and_restore`);
      checkpoints hold the state and `batcher.state(step)` with
      `train_seconds` (and `final_loss` at the last step).
    state: the state at `start`.
    step_fn: (state, step, n) -> (state, metrics with 'loss'): `n` steps from
      `step` (n > 1 only with `schedule.steps_per_call`).
    eval_fn: (state, step) -> metrics (keys as written, e.g. 'validation/...'),
      called at the schedule's evaluation steps; its metrics go with the
      checkpoint (for the best-checkpoint policy), to `writer` and to
      `history_path`.
    train_seconds: the training seconds of earlier invocations: wall seconds
      of training steps, evaluations and checkpoints excluded (the x axis of
      time-to-quality curves).
    writer: scalars ('train/...', the evaluations), or None.
    log_path, history_path: JSON-lines logs of the logged train metrics and of
      the evaluations (with step, epoch and train_seconds).
  """
  s = schedule
  step, stopped, values = start, None, {}
  window, progress = DispatchWindow(), Progress(s.num_train_steps, start, name=name)
  t_steps = last_save = time.time()

  def save(at: int, seconds: float, metrics: dict | None = None) -> None:
    final = {'final_loss': values.get('loss')} if at == s.num_train_steps else {}
    checkpoints.save(manager, at, state, {**batcher.state(at), 'train_seconds': _recorded(
        seconds), **final}, metrics)

  with PreemptionWatch() as watch:
    while step < s.num_train_steps:
      n = s.steps_per_call if step % s.steps_per_call == 0 else 1
      state, metrics = step_fn(state, step, n)
      window.push(metrics['loss'])
      step += n
      final, evaluating = step == s.num_train_steps, s.evaluates_at(step)
      if evaluating:
        window.drain()
        train_seconds += time.time() - t_steps
      so_far = train_seconds + (0.0 if evaluating else time.time() - t_steps)
      logged = step % s.log_every_steps == 0 or final
      if logged or progress.due():
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        rate = progress.log(step, values, (s.max_train_seconds - so_far)
                            if s.max_train_seconds else None,
                            steps_to_stop=-step % s.eval_every_steps if s.eval_every_steps else 0)
        if logged and writer is not None:
          writer.write_scalars(step, {f'train/{k}': v for k, v in values.items()}
                               | {'train/steps_per_sec': rate})
        if logged and log_path:
          append_jsonl(log_path, {'step': step, **values})
      eval_metrics = None
      if evaluating and eval_fn is not None:
        eval_metrics = eval_fn(state, step)
        if writer is not None:
          writer.write_scalars(step, eval_metrics)
        if history_path:
          append_jsonl(history_path, {
              'step': step, 'epoch': round(step / batcher.steps_per_epoch, 3),
              'train_seconds': _recorded(train_seconds), **eval_metrics})
        reason = None if final else s.stop_reason(history_path, step, train_seconds)
        if reason:
          stopped = 'early'
          logging.info('%sStopping at step %d: %s.', f'{name} ' if name else '', step, reason)
      if s.stop_after_step is not None and step >= s.stop_after_step and not final:
        stopped = stopped or 'asked'
      if (evaluating or stopped or (s.checkpoint_every_steps and
                                    step % s.checkpoint_every_steps == 0)
          or 0 < s.checkpoint_every_seconds <= time.time() - last_save):
        save(step, so_far, eval_metrics)
        last_save = time.time()
      if evaluating:
        t_steps = time.time()
      if stopped:
        break
      if not final and watch.requested(step):
        window.drain()
        save(step, train_seconds + time.time() - t_steps)
        manager.wait_until_finished()
        if writer is not None:
          writer.flush()
        raise watch.stop(workdir, step)
  window.drain()
  if step == s.num_train_steps:  # a run of no steps (e.g. nothing to replay) saves its state
    save(step, train_seconds)
  manager.wait_until_finished()
  return Outcome(state, step, _recorded(train_seconds), values, stopped)


def _recorded(seconds: float) -> float:
  """Training seconds as every record of a run holds them (checkpoints, the
  evaluation history, what run_steps returns), so that a run restored from a
  checkpoint reports the seconds the run that trained it reported."""
  return round(seconds, 2)


def read_eval_history(history_path: str) -> list[dict]:
  """The evaluations of eval_history.jsonl, one per step in step order (the
  last record of a step wins: a resumed run may have evaluated it again);
  [] when there is no file."""
  if not os.path.exists(history_path):
    return []
  by_step = {}
  with open(history_path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{history_path} line {n} is not JSON ({e}); fix or remove that '
                         'line.') from None
      by_step[entry['step']] = entry
  return [by_step[k] for k in sorted(by_step)]


def evals_since_best(history_path: str, up_to_step: int,
                     key: str = 'validation/ndcg@10') -> int:
  """Evaluations after the best `key` in eval_history.jsonl, counting those at
  steps <= `up_to_step`."""
  values = [e[key] for e in read_eval_history(history_path) if e['step'] <= up_to_step]
  return len(values) - 1 - int(np.argmax(values)) if values else 0


# ---------------------------------------------------------------------------
# Fixed-budget train-or-restore
# ---------------------------------------------------------------------------
@gin.configurable(allowlist=['checkpoint_every_seconds'])
def train_fixed_budget(workdir: str, name: str, num_train_steps: int, batcher: EpochBatcher,
                       abstract_state, init_fn: Callable[[], object],
                       step_fn: Callable[[object, int], tuple[object, jax.Array]],
                       log_every_steps: int = 200, settings: dict | None = None,
                       checkpoint_every_seconds: float = 300.0,
                       legacy_settings: Callable[[dict], dict] | None = None
                       ) -> tuple[object, float | None, float | None]:
  """Trains `num_train_steps` steps (`run_steps` without evaluations),
  checkpointing in workdir/checkpoints along the way and at the end; restores
  the final state when it is already there.

  For fixed-budget studies (document retrieval, ranking): a second run with
  the same workdir evaluates the saved model without training, and a run
  stopped before its end (killed, preempted: SIGTERM saves a checkpoint at the
  next step) continues from its newest checkpoint, on the same batches the
  uninterrupted run would have seen.

  Args:
    name: shown in the progress lines.
    batcher: the data order (its state is saved and checked on restore).
    abstract_state: the state's ShapeDtypeStructs with shardings (for restore).
    init_fn: () -> the initial state.
    step_fn: (state, step) -> (state, loss).
    settings: what defines the trained model (see `check_run_settings`);
      a workdir trained with other settings is refused instead of restored
      (`legacy_settings`: `check_run_settings`'s `legacy`).
    checkpoint_every_seconds: a checkpoint at the first step this long after
      the previous one (0: at the end only); the newest one is kept.

  Returns:
    (state, training seconds, final loss); the last two as saved, on restore.
  """
  make_workdir(workdir)
  if settings is not None:
    check_run_settings(workdir, settings | {'num_train_steps': num_train_steps},
                       legacy=legacy_settings)
  manager, start, state, saved = checkpoints.open_and_restore(
      os.path.join(workdir, 'checkpoints'), abstract_state, keep=1, best_metric=None)
  try:
    if start is not None:
      batcher.check_resumable(saved, os.path.join(workdir, 'checkpoints', str(start)))
      if start > num_train_steps:
        raise ValueError(f'{workdir} holds a checkpoint of step {start}, beyond '
                         f'num_train_steps = {num_train_steps}: use a new --workdir for a '
                         'shorter run.')
    if start == num_train_steps:
      logging.info('%s: evaluating the checkpoint of %s', name, workdir)
      return state, saved.get('train_seconds'), saved.get('final_loss')
    if start is None:
      start, state, train_s = 0, init_fn(), 0.0
    else:
      train_s = float(saved.get('train_seconds') or 0.0)
      logging.info('%s: resuming at step %d of %d from %s', name, start, num_train_steps,
                   os.path.join(workdir, 'checkpoints'))
    schedule = Schedule(num_train_steps, log_every_steps=log_every_steps,
                        checkpoint_every_seconds=checkpoint_every_seconds)
    out = run_steps(workdir, schedule, manager, state, start, batcher,
                    lambda st, step, n: _loss_only(step_fn(st, step)), name=name,
                    train_seconds=train_s)
  finally:
    manager.close()
  return out.state, out.train_seconds, out.last_metrics.get('loss')


def _loss_only(out: tuple[object, jax.Array]) -> tuple[object, dict]:
  state, loss = out
  return state, {'loss': loss}
