"""Test setup: 8 fake CPU devices (set before jax is imported), quiet TF."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Text-embedding caches of the tests go to a temporary folder, not ~/.cache.
os.environ.setdefault('GENREC_CACHE_DIR', tempfile.mkdtemp(prefix='genrec-test-cache-'))
# Many tests build the same tiny models again (each Trainer jits anew): a
# persistent compilation cache, shared by the xdist workers and the main.py
# subprocesses of one session, compiles each program once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ['GENREC_CACHE_DIR'], 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], 'GPU')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def data_dir_or_skip(*parts: str) -> str:
  """The shared data dir (GENREC_DATA_DIR or ../shared/data), else skip."""
  base = os.environ.get('GENREC_DATA_DIR') or os.path.join(REPO_ROOT, '..', 'shared', 'data')
  path = os.path.join(base, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: set GENREC_DATA_DIR to the folder holding amazon-2014/ '
                '(CI has it at ../shared/data).')
  return base
