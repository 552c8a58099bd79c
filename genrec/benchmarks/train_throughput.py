r"""Training-step throughput of an encoder-decoder size on the current devices,
optionally beside the PyTorch peer in the same run.

  python -m genrec.benchmarks.train_throughput --gin_file=gin/models/tiger.gin \
      --batch_size=256 --steps=50
  # genrec vs Hugging Face T5 (peer_hf_t5.py, its own virtualenv) at 1-level
  # (20 history tokens, 12,101-item vocabulary) and TIGER's 4-level shapes:
  python -m genrec.benchmarks.train_throughput --peer_python=../peer-venv/bin/python \
      --shapes=20x1x12101,81x5x3000 --steps=5 --output=docs/results/train_throughput.csv

Random batches shaped like Amazon Beauty with atomic IDs (20 history items of
one token, a 12,101-item vocabulary) unless flags say otherwise (`--shapes`:
input tokens x target tokens x items, several per run). Prints the
median step time over `--steps` timed steps (after `--warmup` steps that
include compilation), examples/s, tokens/s (encoder + decoder tokens) and
peak memory (device memory where the backend reports it, else the process's
peak RSS), as a markdown row; `--output` appends it to a CSV as well.
"""

import csv
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
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
flags.DEFINE_list('shapes', [], 'input_len x target_len x num_items triples, e.g. '
                  '20x1x12101,81x5x3000 (overrides the three flags above).')
flags.DEFINE_string('peer_python', None, 'Python of a virtualenv with torch and '
                    'transformers<5: also time peer_hf_t5.py at the same shapes.')
flags.DEFINE_string('histories', None,
                    "A data set ('beauty', 'sports', 'toys'): also time steps on its "
                    "training prefixes (leave-one-out) at each shape: genrec packs them "
                    "several to a row (train.train.pack_examples), the peer pads each batch "
                    "to its longest input, as a data collator does.")
flags.DEFINE_string('data_dir', None, 'Folder holding amazon-2014/ (default: '
                    '$GENREC_DATA_DIR).')
flags.DEFINE_string('output', None, 'CSV file to append the result to.')
FLAGS = flags.FLAGS


def peak_memory_mb() -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'host RSS'


def run(config: models.EncoderDecoderConfig, batch_size: int, steps: int, warmup: int,
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


def prefix_lengths(name: str, input_len: int, target_len: int, data_dir: str | None,
                   seed: int = 0) -> np.ndarray:
  """Encoder input lengths of a data set's training prefixes at a shape, in a
  seeded random order: items of max(1, target_len - 1) tokens (TIGER's
  identifier; the last target token is its end token), the history's last
  input_len // that many items, and input_len % that many leading tokens (TIGER's
  user token)."""
  from genrec.data import sequences  # pylint: disable=g-import-not-at-top
  levels = max(1, target_len - 1)
  max_history, extra = divmod(input_len, levels)
  data = sequences.load_dataset(name, data_dir)
  items = (sequences.leave_one_out(data, max_history)['train'].history > 0).sum(axis=1)
  return np.random.default_rng(seed).permutation(extra + levels * items)


def run_packed(config: models.EncoderDecoderConfig, batch_size: int, steps: int, warmup: int,
               lengths: np.ndarray, input_len: int, target_len: int, mesh) -> dict:
  """Steps on packed rows of examples with these input lengths: examples/s
  over the timed batches (each about batch_size examples)."""
  from genrec.recommendation import features  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  hi = config.vocab_size
  n = len(lengths)
  enc = rng.integers(NUM_RESERVED_TOKENS, hi, (n, input_len)).astype(np.int32)
  enc[np.arange(input_len)[None] >= lengths[:, None]] = 0
  tgt = rng.integers(NUM_RESERVED_TOKENS, hi, (n, target_len)).astype(np.int32)
  arrays, info = features.pack_prefix_arrays({
      'encoder_input_tokens': enc, 'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt)})
  rows = features.packed_rows_per_batch(batch_size, info, partitioning.data_parallel_size(mesh))
  tx, lr = trainer.make_optimizer(steps + warmup, warmup_steps=10)
  tr = trainer.Trainer(config, tx, mesh, lr)
  state = tr.init_state(0)
  order = rng.permutation(info['rows'])
  key = jax.random.key(0)
  times, examples = [], 0
  for i in range(warmup + steps):
    idx = order[i * rows:(i + 1) * rows]
    batch = partitioning.shard_batch({k: v[idx] for k, v in arrays.items()}, mesh)
    t0 = time.perf_counter()
    state, m = tr.train_step(state, batch, key)
    jax.block_until_ready(m['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
      examples += int((arrays['decoder_segment_ids'][idx] > 0).sum()) // target_len
  return {'packed_rows_per_batch': rows, 'packed_examples_per_row': round(n / info['rows'], 2),
          'packed_token_fill': info['token_fill'],
          'packed_decoder_slots': info['max_per_row'],
          'packed_median_step_ms': round(float(np.median(times)) * 1e3, 2),
          'packed_examples_per_s': round(examples / sum(times), 1)}


def peer_row(config: models.EncoderDecoderConfig, batch_size: int, input_len: int,
             target_len: int, steps: int, lengths: np.ndarray | None = None) -> dict:
  """Times the PyTorch peer (peer_hf_t5.py) at the same sizes and shapes (with
  `lengths`, on batches of those input lengths padded to their longest)."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'peer_hf_t5.py')
  args = [FLAGS.peer_python, script, f'--batch_size={batch_size}', f'--input_len={input_len}',
          f'--target_len={target_len}', f'--vocab_size={config.vocab_size}',
          f'--d_model={config.d_model}', f'--head_dim={config.head_dim}',
          f'--d_ff={config.d_ff}', f'--num_heads={config.num_heads}',
          f'--num_encoder_layers={config.num_encoder_layers}',
          f'--num_decoder_layers={config.num_decoder_layers}',
          f'--dropout_rate={config.dropout_rate}', f'--steps={steps}']
  with tempfile.TemporaryDirectory() as tmp:
    if lengths is not None:
      path = os.path.join(tmp, 'lengths.json')
      with open(path, 'w') as f:
        json.dump(lengths[:(steps + 3) * batch_size].tolist(), f)  # 3: its warmup
      args.append(f'--lengths_file={path}')
    proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'The peer failed ({" ".join(args)}):\n{proc.stderr[-2000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  gin.add_config_file_search_path(os.getcwd())
  gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
  base = gin.get_configurable(models.EncoderDecoderConfig)()
  data, fsdp, model = (int(x) for x in FLAGS.mesh.split(','))
  mesh = partitioning.make_mesh(data, fsdp, model)
  shapes = ([tuple(int(v) for v in s.split('x')) for s in FLAGS.shapes] or
            [(FLAGS.input_len, FLAGS.target_len, FLAGS.num_items)])
  results = []
  for input_len, target_len, num_items in shapes:
    vocab = -(-(NUM_RESERVED_TOKENS + num_items) // 128) * 128
    config = dataclasses.replace(base, vocab_size=vocab)
    result = {'model': ','.join(os.path.basename(f) for f in FLAGS.gin_file),
              'shape': f'{input_len}x{target_len}x{num_items}',
              **run(config, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup, input_len,
                    target_len, mesh)}
    if FLAGS.peer_python:
      peer = peer_row(config, FLAGS.batch_size, input_len, target_len, FLAGS.steps)
      result.update(peer_examples_per_s=peer['examples_per_s'],
                    peer_median_step_ms=peer['median_step_ms'], peer_torch=peer['torch'],
                    ratio_vs_peer=round(result['examples_per_s'] / peer['examples_per_s'], 2))
    if FLAGS.histories:
      lengths = prefix_lengths(FLAGS.histories, input_len, target_len, FLAGS.data_dir)
      result.update(histories=FLAGS.histories, mean_input_len=round(float(lengths.mean()), 1),
                    **run_packed(config, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup, lengths,
                                 input_len, target_len, mesh))
      if FLAGS.peer_python:
        peer = peer_row(config, FLAGS.batch_size, input_len, target_len, FLAGS.steps, lengths)
        result.update(peer_padded_examples_per_s=peer['examples_per_s'],
                      packed_ratio_vs_peer=round(result['packed_examples_per_s']
                                                 / peer['examples_per_s'], 2))
    result.update(date=time.strftime('%Y-%m-%d'), commit=tables.source_commit(),
                  command='python -m genrec.benchmarks.train_throughput '
                  + ' '.join(sys.argv[1:]))
    results.append(result)
    print(tables.markdown([{k: v for k, v in result.items() if k != 'command'}]), flush=True)
  if FLAGS.output:
    new = not os.path.exists(FLAGS.output)
    with open(FLAGS.output, 'a', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(results[0]))
      if new:
        writer.writeheader()
      writer.writerows(results)


if __name__ == '__main__':
  app.run(main)
