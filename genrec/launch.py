"""The one entry point: `python main.py --gin_file=... --workdir=...`, or the
`genrec` command (the same flags).

Flags, optional multi-process initialization, gin, then one call, as t5x's
main does. Which application runs is configuration: every file in gin/runs/
binds `launch.run_experiment.run` to one run function (train a recommender,
train and evaluate document retrievers, train and evaluate rankers, infer
from a checkpoint), and experiments include one of them.
"""

from collections.abc import Callable
import importlib.util
import logging as py_logging
import os

from absl import app, flags, logging

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
                    'Call jax.distributed.initialize() (multi-host GPU/TPU jobs).')
  flags.DEFINE_bool('allow_config_change', False,
                    'Resume a run directory although settings that change what its saved '
                    'steps mean (model, optimizer, identifiers, data) differ; the change is '
                    'recorded in settings_changes.jsonl.')


RUNS_HELP = ('include one of gin/runs/*.gin (train.gin, quickstart.gin, infer.gin, '
             'retrieval.gin, retrieval_infer.gin, ranking.gin) or bind '
             'launch.run_experiment.run')


def run_experiment(workdir: str, run: Callable | None = None):
  """Calls the configured run function with the run directory.

  Args:
    workdir: --workdir.
    run: the run function (gin: `launch.run_experiment.run = @train.train`).
  """
  if run is None:
    raise app.UsageError(f'The gin files configure no run: {RUNS_HELP}.')
  return run(workdir=workdir)


def _quiet_logs(record) -> bool:
  """Drops the INFO lines of orbax (every save), seqio (every split) and jax
  (backend probing); their warnings and errors still show."""
  return record.levelno >= py_logging.WARNING or not any(
      f'/{lib}/' in record.pathname for lib in ('orbax', 'seqio', 'jax'))


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
  # tf.data runs on the host: keep TensorFlow off the accelerators JAX uses.
  # (Without TensorFlow, training uses genrec's numpy input pipeline.)
  if importlib.util.find_spec('tensorflow') is not None:
    import tensorflow as tf
    for kind in ('GPU', 'TPU'):
      if tf.config.list_physical_devices(kind):
        tf.config.set_visible_devices([], kind)
  import jax
  if FLAGS.multiprocess:
    jax.distributed.initialize()
  import gin
  from genrec import gin_utils, loop
  try:
    loop.make_workdir(FLAGS.workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  loop.allow_config_change = FLAGS.allow_config_change
  gin_utils.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
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
