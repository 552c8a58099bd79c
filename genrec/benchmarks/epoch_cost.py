r"""Cost of one training epoch: prefix-expanded encoder-decoder vs sequence-level
models, on a real data set's padding and lengths.

  python -m genrec.benchmarks.epoch_cost --data_dir=../shared/data --dataset=beauty \
      --output_dir=docs/results

Every model trains on the same targets (every item after a user's first in
the training part of leave-one-out, with up to `--max_history` items of
context): the encoder-decoder sees one example per target (the history
prefix re-encoded each time), the sequence-level models one example per user
window (`data.windows.sequence_windows`), every target at once. Identifiers are
`--levels`-token random codes (the cost depends on lengths only, not on which
codes). Per model: examples and steps per epoch, XLA's FLOP count of one
step (`cost_analysis`), the median step time over `--steps` steps on real
batches, and from them FLOPs and wall time per epoch and target items/s; on
an accelerator whose bf16 peak is known (`scaling.PEAK_TFLOPS`), the step's
model FLOP utilization (`mfu`).
"""

import sys
import time

from absl import app, flags
import jax
import numpy as np

from genrec import models, partitioning, tables, trainer
from genrec.data import sequences
from genrec import ids as ids_lib
from genrec.benchmarks.scaling import peak_tflops
from genrec.recommendation import features

flags.DEFINE_string('data_dir', None, 'Data folder (default $GENREC_DATA_DIR).')
flags.DEFINE_string('dataset', 'beauty', 'Data set name or folder.')
flags.DEFINE_integer('levels', 4, 'Identifier tokens per item (TIGER: 3 codes + 1).')
flags.DEFINE_integer('max_history', 20, 'History items per example.')
flags.DEFINE_integer('batch_size', 256, 'Examples per step.')
flags.DEFINE_integer('steps', 5, 'Timed steps per model (after 2 untimed ones).')
flags.DEFINE_integer('long_levels', 32, 'Codes per item of the item-level model with the '
                     'parallel head (RPG-style long IDs).')
flags.DEFINE_list('models', ['encoder_decoder', 'encoder_decoder_packed', 'decoder_only',
                            'sasrec', 'item_sid', 'item_sid_ar'], 'Models to time.')
flags.DEFINE_string('output_dir', None, 'Where to write <table_stem>.md/.csv.')
flags.DEFINE_string('table_stem', 'epoch_cost', "The table's file name.")
FLAGS = flags.FLAGS

# TIGER's width and depth (gin/models/tiger.gin); SASRec at the same width.
TIGER = models.EncoderDecoderConfig(d_model=128, num_heads=6, head_dim=64, d_ff=1024,
                                    num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.1)
_WIDTH = dict(d_model=TIGER.d_model, num_heads=TIGER.num_heads, head_dim=TIGER.head_dim,
              d_ff=TIGER.d_ff, dropout_rate=TIGER.dropout_rate, activation=TIGER.activation)
# The models timed at TIGER's width, 8 blocks deep (the encoder-decoder's 4 + 4).
MODELS = {'encoder_decoder': lambda: models.EncoderDecoderModel(TIGER),
          'decoder_only': lambda: models.DecoderOnlyModel(
              models.DecoderOnlyConfig(num_layers=8, **_WIDTH)),
          'sasrec': lambda: models.SASRecModel(models.SASRecConfig(num_layers=8, **_WIDTH))}


def long_random_ids(data: sequences.SequenceData, levels: int, seed: int = 0) -> ids_lib.ItemIds:
  """`levels` random codes of 256 per item (long IDs; cost depends on the
  lengths only)."""
  codes = np.full((data.num_items + 1, levels), -1, np.int32)
  codes[1:] = np.random.default_rng(seed).integers(0, 256, (data.num_items, levels))
  return ids_lib.ItemIds(codes=codes, level_sizes=(256,) * levels, scheme=f'random-{levels}x256')


def model_setup(name: str, data: sequences.SequenceData, max_history: int, levels: int,
                long_levels: int = 32):
  """(model, training arrays, target items per row) of a model;
  'encoder_decoder_packed' is the encoder-decoder with its prefixes packed
  several to a row (train.train.pack_examples); 'item_sid' is the item-level
  Semantic-ID model with the parallel head over `long_levels` codes,
  'item_sid_ar' with the autoregressive head (one layer) over `levels`, both
  with 8 blocks at TIGER's width like SASRec here."""
  if name.startswith('item_sid'):
    ar = name == 'item_sid_ar'
    sid = (ids_lib.RandomCodeIds(num_levels=levels, codebook_size=256, seed=0).fit(data) if ar
           else long_random_ids(data, long_levels))
    model_cls, config_cls = ((models.ItemSidAutoregressiveModel, models.ItemSidAutoregressiveConfig)
                             if ar else (models.ItemSidModel, models.ItemSidConfig))
    model = model_cls(config_cls(
        d_model=TIGER.d_model, num_heads=TIGER.num_heads, head_dim=TIGER.head_dim,
        d_ff=TIGER.d_ff, num_layers=8, dropout_rate=TIGER.dropout_rate)).resolve(
            sid, data.num_items, max_history)
    arrays = model.training_arrays(data, sid, max_history, None)
    return model, arrays, (arrays['next_codes'][..., 0] >= 0).sum(1)
  packed = name == 'encoder_decoder_packed'
  name = 'encoder_decoder' if packed else name
  codes = ids_lib.RandomCodeIds(num_levels=levels, codebook_size=256, seed=0).fit(data)
  atomic = ids_lib.AtomicIds().fit(data)
  item_ids = atomic if name == 'sasrec' else codes
  model = MODELS[name]().resolve(item_ids, data.num_items, max_history)
  prefix = None
  if model.training_examples == 'prefix':
    prefix = features.load_arrays(data, item_ids, max_history, 'numpy')[0]
  arrays = model.training_arrays(data, item_ids, max_history, prefix)
  if packed:
    arrays, _ = features.pack_prefix_arrays(arrays)
    targets = (arrays['decoder_segment_ids'] > 0).sum(1) / item_ids.num_levels
  elif 'tokens' in arrays:
    targets = arrays['loss_weights'].sum(1) / item_ids.num_levels
  elif 'next_items' in arrays:
    targets = (arrays['next_items'] > 0).sum(1)
  else:
    targets = np.ones(len(arrays['decoder_target_tokens']))
  return model, arrays, targets


def measure(name: str, data, max_history: int, levels: int, batch_size: int, steps: int
            ) -> dict:
  model, arrays, targets = model_setup(name, data, max_history, levels, FLAGS.long_levels)
  if 'decoder_segment_ids' in arrays:  # packed: rows holding about batch_size examples
    batch_size = features.packed_rows_per_batch(
        batch_size, {'rows': len(targets), 'examples': targets.sum()})
  mesh = partitioning.make_mesh(-1, 1, 1)
  tx, lr = trainer.make_optimizer(100, warmup_steps=10)
  tr = trainer.Trainer(model.config, tx, mesh, lr)
  state = tr.init_state(0)
  n = len(targets)
  order = np.random.default_rng(0).permutation(n)
  key = jax.random.key(0)
  batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(steps + 2)]
  first = partitioning.shard_batch({k: v[batches[0]] for k, v in arrays.items()}, mesh)
  cost = tr.train_step.lower(state, first, key).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', float('nan')))
  times, step_targets = [], []
  for i, idx in enumerate(batches):
    batch = partitioning.shard_batch({k: v[idx] for k, v in arrays.items()}, mesh)
    t0 = time.perf_counter()
    state, m = tr.train_step(state, batch, key)
    jax.block_until_ready(m['loss'])
    if i >= 2:
      times.append(time.perf_counter() - t0)
      step_targets.append(targets[idx].sum())
  step_s = float(np.median(times))
  steps_per_epoch = -(-n // batch_size)
  peak = peak_tflops(jax.devices()[0].device_kind)
  return {
      'model': name, 'training_examples': model.training_examples,
      'rows_per_step': batch_size,
      'params_M': round(trainer.param_count(state.params) / 1e6, 2),
      'examples_per_epoch': n, 'target_items_per_epoch': int(targets.sum()),
      'steps_per_epoch': steps_per_epoch,
      'input_length': int(next(iter(arrays.values())).shape[1]),
      'gflop_per_step': round(flops / 1e9, 1),
      'tflop_per_epoch': round(flops * steps_per_epoch / 1e12, 2),
      'median_step_s': round(step_s, 3),
      'epoch_minutes': round(step_s * steps_per_epoch / 60, 1),
      'target_items_per_s': round(float(np.median(step_targets)) / step_s, 1),
      'mfu': '' if peak is None else round(flops / step_s / 1e12 / (peak * jax.device_count()), 4),
      'device': partitioning.device_summary(),
  }


def main(argv):
  del argv
  data = sequences.load_dataset(FLAGS.dataset, FLAGS.data_dir)
  rows = []
  for name in FLAGS.models:
    rows.append(measure(name, data, FLAGS.max_history, FLAGS.levels, FLAGS.batch_size,
                        FLAGS.steps))
    print(tables.markdown(rows[-1:]), flush=True)
  base = rows[0]['target_items_per_s']
  for r in rows:
    r['target_items_per_s_vs_first'] = round(r['target_items_per_s'] / base, 2)
  date = time.strftime('%Y-%m-%d')
  command = 'python -m genrec.benchmarks.epoch_cost ' + ' '.join(sys.argv[1:])
  for r in rows:
    r.update(date=date, commit=tables.source_commit(), command=command)
  text = tables.markdown(rows, [k for k in rows[0] if k != 'command'])
  print(text, flush=True)
  if FLAGS.output_dir:
    tables.write(f'# One training epoch on {data.name}: prefix-expanded vs sequence-level\n\n'
                 f'`{command}` ({date}, {rows[0]["device"]}; batch {FLAGS.batch_size}, median '
                 f'of {FLAGS.steps} steps per model)\n\n{text}\n', rows, FLAGS.output_dir,
                 FLAGS.table_stem)


if __name__ == '__main__':
  app.run(main)
