r"""Training-step throughput of an encoder-decoder size on the current devices.

  python -m genrec.benchmarks.train_throughput --gin_file=gin/models/tiger.gin \
      --batch_size=256 --steps=50

Random batches shaped like Amazon Beauty with atomic IDs (20 history items of
one token, a 12,101-item vocabulary) unless flags say otherwise. Prints the
median step time over `--steps` timed steps (after `--warmup` steps that
include compilation), examples/s, tokens/s (encoder + decoder tokens) and
peak memory (device memory where the backend reports it, else the process's
peak RSS), as a markdown row; `--output` appends it to a CSV as well.
"""

import csv
import dataclasses
import os
import resource
import time

from absl import app, flags
import gin
import jax
import numpy as np

from genrec import models, partitioning, tables, trainer
from genrec.ids import NUM_RESERVED_TOKENS

flags.DEFINE_multi_string('gin_file', ['gin/models/tiger.gin'], 'Model-size gin files.')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
flags.DEFINE_integer('batch_size', 256, 'Global batch size.')
flags.DEFINE_integer('steps', 50, 'Timed steps.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation included).')
flags.DEFINE_integer('input_len', 20, 'Encoder tokens per example.')
flags.DEFINE_integer('target_len', 1, 'Decoder tokens per example (identifier length).')
flags.DEFINE_integer('num_items', 12101, 'Catalog size (atomic IDs: vocabulary).')
flags.DEFINE_string('mesh', '-1,1,1', 'Mesh sizes data,fsdp,model.')
flags.DEFINE_string('output', None, 'CSV file to append the result to.')
FLAGS = flags.FLAGS


def peak_memory_mb() -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host RSS'


def run(config: models.TransformerConfig, batch_size: int, steps: int, warmup: int,
        input_len: int, target_len: int, mesh) -> dict:
  tx, lr = trainer.make_optimizer(steps + warmup, warmup_steps=10)
  tr = trainer.Trainer(config, tx, mesh, lr)
  state = tr.init_state(0)
  rng = np.random.default_rng(0)
  hi = config.vocab_size
  tgt = rng.integers(NUM_RESERVED_TOKENS, hi, (batch_size, target_len)).astype(np.int32)
  batch = partitioning.shard_batch({
      'encoder_input_tokens': rng.integers(NUM_RESERVED_TOKENS, hi,
                                           (batch_size, input_len)).astype(np.int32),
      'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': tgt,
      'decoder_loss_weights': np.ones_like(tgt)}, mesh)
  key = jax.random.key(0)
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, m = tr.train_step(state, batch, key)
    jax.block_until_ready(m['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  mem, where = peak_memory_mb()
  return {
      'device': partitioning.device_summary(),
      'params_M': round(trainer.param_count(state.params) / 1e6, 2),
      'batch_size': batch_size, 'median_step_ms': round(step_s * 1e3, 2),
      'p90_step_ms': round(float(np.percentile(times, 90)) * 1e3, 2),
      'examples_per_s': round(batch_size / step_s, 1),
      'tokens_per_s': round(batch_size * (input_len + target_len) / step_s, 1),
      'peak_memory_MB': round(mem, 1), 'memory_of': where,
  }


def main(argv):
  del argv
  gin.add_config_file_search_path(os.getcwd())
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  config = gin.get_configurable(models.TransformerConfig)()
  vocab = -(-(NUM_RESERVED_TOKENS + FLAGS.num_items) // 128) * 128
  config = dataclasses.replace(config, vocab_size=vocab)
  data, fsdp, model = (int(x) for x in FLAGS.mesh.split(','))
  mesh = partitioning.make_mesh(data, fsdp, model)
  result = {'model': ','.join(os.path.basename(f) for f in FLAGS.gin_file),
            **run(config, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup, FLAGS.input_len,
                  FLAGS.target_len, mesh)}
  print(tables.markdown([result]), flush=True)
  if FLAGS.output:
    new = not os.path.exists(FLAGS.output)
    with open(FLAGS.output, 'a', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(result))
      if new:
        writer.writeheader()
      writer.writerow(result)


if __name__ == '__main__':
  app.run(main)
