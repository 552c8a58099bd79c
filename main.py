"""genrec entry point: `python main.py --gin_file=gin/runs/quickstart.gin --workdir=...`.

Flags, optional multi-process initialization, gin, then one call (as t5x's
train.py does).
"""

import importlib.util
import logging as py_logging
import os

from absl import app, flags, logging

flags.DEFINE_multi_string('gin_file', [], 'Gin config files, applied in order.')
flags.DEFINE_multi_string('gin_bindings', [], 'Individual gin bindings, applied last.')
flags.DEFINE_multi_string('gin_search_paths', ['.', os.path.dirname(os.path.abspath(__file__))],
                          'Folders searched for gin files and their includes.')
flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, results, config).',
                    required=True)
flags.DEFINE_bool('multiprocess', False,
                  'Call jax.distributed.initialize() (multi-host GPU/TPU jobs).')
FLAGS = flags.FLAGS


def _quiet_orbax(record) -> bool:
  """Drops orbax's per-save INFO lines; its warnings and errors still show."""
  return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
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
  from genrec import train
  for path in FLAGS.gin_search_paths:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  logging.info('Process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  gin.get_configurable(train.train)(workdir=FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
