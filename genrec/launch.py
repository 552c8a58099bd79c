"""The one entry point: `python main.py --gin_file=... --workdir=...`, or the
`genrec` command (the same flags).

Flags, optional multi-process initialization, gin, then one call, as t5x's
main does. Which application runs is configuration: every file in gin/runs/
binds `launch.run_experiment.run` to one run function (train a recommender,
train and evaluate document retrievers, train and evaluate rankers, infer
from a checkpoint), and experiments include one of them.
"""

from collections.abc import Callable
import difflib
import errno
import importlib
import importlib.util
import logging as py_logging
import os
import re
import sys

try:
  from absl import app, flags, logging
except ModuleNotFoundError as e:  # a serving-only install
  raise SystemExit(f'genrec\'s training stack is not installed ({e}): pip install '
                   '"genrec[train]" (in a checkout: pip install -e ".[train]"); the base '
                   'install serves exported models only (genrec-serve).') from None

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The entry point's flags. Defined when the entry point runs, not on import:
  gin files import this module for `run_experiment`, and scripts with flags of
  the same names (the benchmarks) may be loaded in the same process."""
  if 'workdir' in FLAGS:
    return
  flags.DEFINE_multi_string('gin_file', [], 'Gin config files, applied in order.')
  flags.DEFINE_multi_string('gin_bindings', [], 'Individual gin bindings, applied last.')
  flags.DEFINE_multi_string('gin_search_paths', [],
                            'More folders searched for gin files and their includes (the '
                            'current folder and the installed gin/ files are always searched).')
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, results, config).')
  flags.DEFINE_bool('multiprocess', False,
                    'Call jax.distributed.initialize() and let it find the job from the '
                    'environment (Cloud TPU VMs, SLURM, Open MPI). Other clusters: give '
                    '--coordinator_address, --num_processes and --process_id instead.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0\'s coordinator, for a multi-process job '
                      '(default $JAX_COORDINATOR_ADDRESS); with --num_processes and '
                      '--process_id. `python -m genrec.local_cluster` sets all three.')
  flags.DEFINE_integer('num_processes', None,
                       'Processes in the job (default $JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None, 'This process\'s index, 0..num_processes - 1 '
                       '(default $JAX_PROCESS_ID).')
  flags.DEFINE_integer('heartbeat_timeout_s', 100,
                       'A multi-process job stops when a process has been silent this '
                       'long (e.g. it was killed), instead of waiting for it forever.')
  flags.DEFINE_bool('debug', False,
                    'Show the Python traceback of a data, config or run-directory error '
                    '(by default the error prints as one message).')
  flags.DEFINE_bool('allow_config_change', False,
                    'Resume a run directory although settings that change what its saved '
                    'steps mean (model, optimizer, identifiers, data) differ; the change is '
                    'recorded in settings_changes.jsonl.')


RUNS_HELP = ('include one of gin/runs/*.gin (train.gin, quickstart.gin, infer.gin, '
             'retrieval.gin, retrieval_infer.gin, ranking.gin) or bind '
             'launch.run_experiment.run')


def run_experiment(workdir: str, run: Callable | None = None, lock_workdir: bool = True):
  """Calls the configured run function with the run directory.

  Args:
    workdir: --workdir.
    run: the run function (gin: `launch.run_experiment.run = @train.train`).
    lock_workdir: hold the run directory's lock (`loop.RunLock`) for the run,
      so that a second start on the same folder is refused; the modes that
      only read a run (infer, export: it locks its serving directory) say
      False.
  """
  if run is None:
    raise app.UsageError(f'The gin files configure no run: {RUNS_HELP}.')
  if not lock_workdir:
    return run(workdir=workdir)
  from genrec import loop  # pylint: disable=g-import-not-at-top
  with loop.RunLock(os.path.join(workdir, loop.LOCK_FILE)):
    return run(workdir=workdir)


def _quiet_logs(record) -> bool:
  """Drops the INFO lines of orbax (every save), seqio (every split) and jax
  (backend probing); their warnings and errors still show."""
  return record.levelno >= py_logging.WARNING or not any(
      f'/{lib}/' in record.pathname for lib in ('orbax', 'seqio', 'jax'))


def distributed_settings() -> dict | None:
  """The arguments of jax.distributed.initialize() from the flags and the
  environment: {} (let jax detect a TPU VM, SLURM or Open MPI job:
  --multiprocess), the explicit job (--coordinator_address, --num_processes,
  --process_id, or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID variables MaxText's and t5x's launchers set), or None (one
  process)."""
  env = os.environ
  address = FLAGS.coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  count = FLAGS.num_processes if FLAGS.num_processes is not None else env.get(
      'JAX_NUM_PROCESSES')
  index = FLAGS.process_id if FLAGS.process_id is not None else env.get('JAX_PROCESS_ID')
  given = {'--coordinator_address': address, '--num_processes': count,
           '--process_id': index}
  if all(v is None for v in given.values()):
    return {} if FLAGS.multiprocess else None
  missing = [name for name, v in given.items() if v is None]
  if missing:
    raise app.UsageError(f'A multi-process job needs --coordinator_address, --num_processes '
                         f'and --process_id (or their JAX_* variables); {missing} missing.')
  try:
    count, index = int(count), int(index)
  except ValueError:
    raise app.UsageError(f'--num_processes and --process_id must be integers, not {count!r} '
                         f'and {index!r}.') from None
  if not 0 <= index < count:
    raise app.UsageError(f'--process_id must be in 0..{count - 1}, not {index}.')
  return {'coordinator_address': address, 'num_processes': count, 'process_id': index}


def hide_accelerators_from_tensorflow() -> None:
  """tf.data runs on the host: keeps TensorFlow (if installed; seqio's input
  pipeline and TensorBoard use it) off the accelerators JAX uses, before
  TensorFlow's runtime starts. On a CPU-only machine there is nothing to hide,
  and TensorFlow is not imported here (seconds per launch)."""
  if importlib.util.find_spec('tensorflow') is None:
    return  # training then uses genrec's numpy input pipeline
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for kind in ('GPU', 'TPU'):
    try:
      if tf.config.list_physical_devices(kind):
        tf.config.set_visible_devices([], kind)
    except RuntimeError as e:  # TensorFlow's runtime already started
      logging.warning('Could not hide the %ss from TensorFlow (%s); tf.data may take '
                      'accelerator memory.', kind, e)


def initialize_distributed(jax) -> None:
  settings = distributed_settings()
  if settings is None:
    return
  jax.distributed.initialize(**settings, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)


# OSError numbers that are the machine's state, not a bug: the folder named
# by the error is what to fix.
_DISK_ERRORS = {errno.EROFS: 'the file system is read-only', errno.ENOSPC: 'the disk is full',
                errno.EDQUOT: 'the disk quota is exceeded', errno.EACCES: 'permission denied'}


def _suggest_configurable(message: str) -> str:
  """For gin's "No configurable matching reference '@ids.NopeIds()'": the
  names that module offers, closest first."""
  found = re.search(r"No configurable matching (?:reference )?'@?([\w.]+)", message)
  if not found or '.' not in found.group(1):
    return ''
  module, name = found.group(1).rsplit('.', 1)
  candidates = []
  for path in (f'genrec.{module}', f'genrec.{module.split(".")[-1]}', module):
    try:
      mod = importlib.import_module(path)
    except ImportError:
      continue
    candidates = sorted(n for n, v in vars(mod).items()
                        if not n.startswith('_') and callable(v) and not isinstance(v, type(os))
                        and getattr(v, '__module__', '').startswith(mod.__name__))
    break
  if module == 'ids':  # the identifier schemes, not the module's helpers
    from genrec import config_check, ids  # pylint: disable=g-import-not-at-top
    candidates = re.findall(r'@ids\.(\w+)\(\)', config_check._choices(ids.IdScheme))
  if not candidates:
    return ''
  close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
  hint = f'Did you mean {module}.{close[0]}? ' if close else ''
  return f'\n{hint}{module} offers: {", ".join(candidates)}.'


def readable_error(e: BaseException) -> str | None:
  """One message for an error a person can fix (bad data, config, run
  directory, checkpoint, disk); None for a bug (its traceback is shown)."""
  # gin re-raises an error of a configured call as a copy without the OSError
  # fields (errno, filename); the original is its context.
  while isinstance(e, OSError) and e.errno is None and isinstance(e.__context__, OSError):
    e = e.__context__
  if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
    where = e.filename or 'a file'
    folder = os.path.dirname(os.path.abspath(where)) if e.filename else ''
    return (f'Cannot write {where}: {_DISK_ERRORS[e.errno]}. ' + (
        f'Make {folder} writable (or free space there), or use another --workdir.'
        if folder else 'Free space or fix the permissions of the run directory.'))
  if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
    return str(e)
  if isinstance(e, (ValueError, SyntaxError)):
    # gin adds where it was configured ("In call to configurable ..."): kept short.
    lines = [ln for ln in str(e).splitlines()
             if ln.strip() and not ln.strip().startswith('In call to configurable')]
    text = '\n'.join(lines)
    return text + _suggest_configurable(text)
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required: the run directory (created if absent).')
  if not FLAGS.gin_file:
    raise app.UsageError(f'No --gin_file given: {RUNS_HELP}, e.g. '
                         '--gin_file=gin/runs/quickstart.gin.')
  logging.get_absl_handler().addFilter(_quiet_logs)
  for name in ('absl', ''):
    py_logging.getLogger(name).addFilter(_quiet_logs)
  # TensorFlow's C++ INFO/WARNING lines (CPU features, CUDA probing) are noise here.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax
  initialize_distributed(jax)
  try:
    _run(jax)
  except Exception as e:  # pylint: disable=broad-except
    message = None if FLAGS.debug else readable_error(e)
    if message is None:
      raise
    sys.exit(f'genrec: {message}\n(--debug shows the traceback.)')


def _run(jax) -> None:
  import gin
  from genrec import gin_utils, loop, tables
  tables.source_commit()  # now, while the checkout holds the code this process imports
  try:
    loop.make_workdir(FLAGS.workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  loop.allow_config_change = FLAGS.allow_config_change
  gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  if jax.default_backend() != 'cpu':
    hide_accelerators_from_tensorflow()
  logging.info('Process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    configured = gin.get_configurable(run_experiment)
  except ValueError:  # no gin file registered it: no run mode was included
    raise app.UsageError(f'The gin files configure no run: {RUNS_HELP}.') from None
  configured(workdir=FLAGS.workdir)


def run():
  """The `genrec` console command (and `python main.py`)."""
  define_flags()
  app.run(main)
