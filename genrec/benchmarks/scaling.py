r"""Scaling checks of the sharding strategies (`partitioning.STRATEGIES`).

  python -m genrec.benchmarks.scaling --tables=memory,steps,id_fit --output_dir=docs/results
  # on a GPU host: MFU of the `base` model
  python -m genrec.benchmarks.scaling --tables=mfu --output_dir=runs/scaling_gpu

The tables, each printed as markdown and written to
`<output_dir>/scaling_{memory,steps,mfu,id_fit}.{md,csv}`:

- **memory**: bytes of parameters + AdamW state on one device, for each
  strategy and device count (abstract meshes: nothing is allocated, any
  count works), for the `base` model (gin/models/base.gin) and for the
  Semantic-ID ranker with a `--table_rows` (10M) row hashed table.
- **steps**: train-step time and examples/s of one model (default a small
  encoder-decoder; `--gin_file` for another) for each strategy on 1, 2, 4 and
  8 devices in one process, and on the same 8 devices as 2 processes x 4
  (`genrec.local_cluster`: JAX's distributed runtime, gloo collectives). On
  this CPU the devices are fake (`--xla_force_host_platform_device_count`)
  and share the cores, so this measures the overhead of each strategy's
  collectives and of a second process, not speed-up. The losses of the 2-process
  step equal the 1-process ones (printed: `loss`).
- **mfu** (meant for an accelerator): the `base` model's train step
  at each `--mfu_batch_sizes` on all local devices, FLOPs per step from XLA's
  cost analysis, model FLOP utilization against the device's bf16 peak
  (`PEAK_TFLOPS`, or `--peak_tflops`).
- **id_fit**: a host-side part that is not a JAX program, RQ-KMeans
  identifier fitting, timed on `--fit_items` random items (seconds per
  million items).
"""

import json
import math
import os
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The benchmark's flags, defined when it runs (not on import: other benchmark
  modules define flags of the same names)."""
  flags.DEFINE_multi_string('gin_file', [], 'Model gin files for the step table (default: '
                            'the small model of SMALL).')
  flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.')
  flags.DEFINE_list('strategies', ['data', 'fsdp', 'tensor', 'fsdp_tensor'],
                    'partitioning.STRATEGIES of the step table (the memory table has all).')
  flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts of the step table.')
  flags.DEFINE_integer('batch_size', 64, 'Global batch size of the step table.')
  flags.DEFINE_integer('input_len', 20, 'Encoder tokens per example.')
  flags.DEFINE_integer('target_len', 4, 'Decoder tokens per example.')
  flags.DEFINE_integer('steps', 5, 'Timed steps (the median is reported).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation included).')
  flags.DEFINE_integer('processes', 2, 'Also time the largest device count as this many '
                       'processes (0: skip).')
  flags.DEFINE_list('memory_devices', ['1', '8', '64', '256'], 'Device counts of the '
                    'memory table.')
  flags.DEFINE_integer('base_vocab_size', 1152, 'Vocabulary of the base model (1152: 4 levels '
                       'of 256 Semantic-ID codes + reserved tokens, rounded to 128).')
  flags.DEFINE_integer('table_rows', 10_240_000, 'Rows of the ranker table in the memory table '
                       '(10.24M: divisible by 256 devices).')
  flags.DEFINE_integer('table_dim', 32, 'Width of the ranker table in the memory table.')
  flags.DEFINE_list('tables', ['memory', 'steps'], 'Which tables: memory, steps, mfu (meant '
                    'for an accelerator), id_fit.')
  flags.DEFINE_list('mfu_batch_sizes', ['256', '1024', '4096'], 'Batch sizes of the MFU table.')
  flags.DEFINE_float('peak_tflops', None, 'The device\'s peak bf16 TFLOP/s (default: '
                     'PEAK_TFLOPS by device kind).')
  flags.DEFINE_integer('fit_items', 50_000, 'Items of the id_fit table.')
  flags.DEFINE_string('output_dir', None, 'Where the tables go (markdown + CSV).')
  # Internal: one process of the multi-process step measurement.
  flags.DEFINE_string('worker_output', None, 'Internal: write this process\'s rows here.')
  flags.DEFINE_string('coordinator_address', None, 'Internal (worker).')
  flags.DEFINE_integer('num_processes', None, 'Internal (worker).')
  flags.DEFINE_integer('process_id', None, 'Internal (worker).')


# The step table's default model: small enough for fake CPU devices, 8 heads
# so every strategy divides it on 8 devices.
SMALL = dict(vocab_size=1024, d_model=128, num_heads=8, head_dim=16, d_ff=512,
             num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)

# Dense bf16 peak TFLOP/s per device, by a substring of jax's device_kind.
PEAK_TFLOPS = {'H200': 989.0, 'H100': 989.0, 'A100': 312.0, 'L4': 121.0,
               'TPU v6': 918.0, 'TPU v5p': 459.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0,
               'TPU v4': 275.0}


def peak_tflops(device_kind: str) -> float | None:
  """The bf16 peak of a device kind (`PEAK_TFLOPS`), None when unknown."""
  return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in device_kind.lower()), None)


def step_config():
  import gin  # pylint: disable=g-import-not-at-top
  from genrec import models  # pylint: disable=g-import-not-at-top
  if not FLAGS.gin_file and not FLAGS.gin_bindings:
    return models.EncoderDecoderConfig(**SMALL)
  gin.add_config_file_search_path(os.getcwd())
  # Bindings may name models.EncoderDecoderConfig without a gin file importing it.
  gin.parse_config_files_and_bindings(FLAGS.gin_file, [
      'from __gin__ import dynamic_registration', 'from genrec import models',
      *FLAGS.gin_bindings])
  return gin.get_configurable(models.EncoderDecoderConfig)()


def random_batch(vocab_size: int, batch_size: int) -> dict[str, np.ndarray]:
  """A training batch of random tokens, --input_len x --target_len."""
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, vocab_size, (batch_size, FLAGS.target_len)).astype(np.int32)
  return {'encoder_input_tokens': rng.integers(2, vocab_size, (batch_size, FLAGS.input_len)
                                               ).astype(np.int32),
          'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
          'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt)}


def timed_steps(tr, state, batch, steps: int, warmup: int) -> tuple[list[float], list[float]]:
  """(seconds of each of `steps` train steps after `warmup` untimed ones, every
  step's loss); reading the loss is the host sync that ends a step."""
  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  times, losses = [], []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, m = tr.train_step(state, batch, key)
    losses.append(float(m['loss']))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return times, losses


def time_steps(config, mesh, batch_size: int, steps: int, warmup: int) -> dict:
  """Median train-step time on `mesh` (every process calls it; random batch)."""
  from genrec import partitioning, trainer  # pylint: disable=g-import-not-at-top
  tx, lr = trainer.make_optimizer(steps + warmup, warmup_steps=1)
  tr = trainer.Trainer(config, tx, mesh, lr)
  state = tr.init_state(0)
  batch = random_batch(config.vocab_size, batch_size)
  batch = partitioning.shard_batch(
      {k: v[partitioning.host_slice(batch_size, mesh)] for k, v in batch.items()}, mesh)
  times, losses = timed_steps(tr, state, batch, steps, warmup)
  step_s = float(np.median(times))
  return {'median_step_ms': round(step_s * 1e3, 1),
          'examples_per_s': round(batch_size / step_s, 1),
          'loss': round(losses[-1], 6)}


def _short(error: ValueError) -> str:
  """check_divisible's message up to the mesh details: what does not divide."""
  return str(error).split(' (mesh axes')[0]


def _mesh_or_reason(strategy: str, devices, config):
  """(the strategy's mesh, None) or (None, why it does not fit this model)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from genrec import models, partitioning  # pylint: disable=g-import-not-at-top
  abstract = nnx.state(models.abstract_model(config), nnx.Param)
  try:
    mesh = partitioning.make_mesh(strategy=strategy, devices=devices)
    partitioning.check_divisible(nnx.to_pure_dict(abstract), partitioning.named_shardings(
        partitioning.param_partition_specs(abstract), mesh))
  except ValueError as e:
    return None, _short(e)
  return mesh, None


def step_row(strategy: str, devices, config) -> dict:
  """One row of the step table: `strategy` on `devices` (of every process)."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh, why = _mesh_or_reason(strategy, devices, config)
  row = {'strategy': strategy, 'processes': jax.process_count(), 'devices': len(devices),
         'mesh': '' if mesh is None else 'x'.join(map(str, mesh.devices.shape))}
  row.update(time_steps(config, mesh, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup)
             if mesh is not None else {'note': why})
  return row


def step_rows(config) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from genrec import partitioning  # pylint: disable=g-import-not-at-top
  rows = []
  for strategy in FLAGS.strategies:
    for n in (int(d) for d in FLAGS.devices):
      if n > jax.device_count() or n % math.prod(
          s for s in partitioning.STRATEGIES[strategy] if s != -1):
        continue  # not this many devices, or the strategy's fixed sizes do not fit
      row = step_row(strategy, jax.devices()[:n], config)
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def multiprocess_rows(devices: int) -> list[dict]:
  """The step table's largest device count as FLAGS.processes processes."""
  from genrec import local_cluster  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'rows.jsonl')
    args = [f'--worker_output={out}', f'--strategies={",".join(FLAGS.strategies)}',
            f'--devices={devices}', f'--batch_size={FLAGS.batch_size}',
            f'--input_len={FLAGS.input_len}', f'--target_len={FLAGS.target_len}',
            f'--steps={FLAGS.steps}', f'--warmup={FLAGS.warmup}',
            *[f'--gin_file={f}' for f in FLAGS.gin_file],
            *[f'--gin_bindings={b}' for b in FLAGS.gin_bindings]]
    job = local_cluster.run(
        args, FLAGS.processes, devices // FLAGS.processes, os.path.join(tmp, 'logs'),
        program=(sys.executable, '-m', 'genrec.benchmarks.scaling'), echo=False,
        timeout_s=1800)
    if not job.ok:
      log = open(os.path.join(tmp, 'logs', f'process_{job.failed}.log')).read()
      raise RuntimeError(f'The {FLAGS.processes}-process measurement failed (process '
                         f'{job.failed}):\n{log[-3000:]}')
    with open(out) as f:
      return [json.loads(line) for line in f]


def worker() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
  config = step_config()
  rows = []
  for strategy in FLAGS.strategies:
    rows.append(step_row(strategy, jax.devices(), config))
  if jax.process_index() == 0:
    with open(FLAGS.worker_output, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)


def base_config(vocab_size: int):
  import gin  # pylint: disable=g-import-not-at-top
  from genrec import models  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.parse_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), 'gin', 'models', 'base.gin'))
  config = gin.get_configurable(models.EncoderDecoderConfig)(vocab_size=vocab_size)
  gin.clear_config()
  return config


def memory_rows(device_counts=(1, 8, 64, 256), table_rows: int = 10_240_000,
                table_dim: int = 32, base_vocab_size: int = 1152) -> list[dict]:
  """Per-device parameter + AdamW bytes by strategy and device count, for the
  `base` model and the ranker with a `table_rows` x `table_dim` table."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import AbstractMesh  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from genrec import models, partitioning, trainer  # pylint: disable=g-import-not-at-top
  from genrec.ranking import ranker  # pylint: disable=g-import-not-at-top
  base = base_config(base_vocab_size)
  subjects = {
      'base encoder-decoder': models.abstract_model(base),
      f'ranker, {table_rows:,}-row table': ranker.abstract_ranker(
          ranker.RankerConfig(dim=table_dim), table_rows),
  }
  tx = optax.adamw(1e-3)
  rows = []
  for name, model in subjects.items():
    abstract, specs, abstract_opt, opt_specs = trainer.param_and_opt_specs(
        nnx.state(model, nnx.Param), tx)
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves((abstract, abstract_opt)))
    for strategy in partitioning.STRATEGIES:  # abstract: every strategy costs nothing
      for n in device_counts:
        try:
          sizes = partitioning.mesh_sizes(num_devices=n, strategy=strategy)
        except ValueError:
          continue
        mesh = AbstractMesh(sizes, partitioning.MESH_AXES)
        shardings = partitioning.named_shardings((specs, opt_specs), mesh)
        row = {'model': name, 'params_M': round(trainer.param_count(abstract) / 1e6, 1),
               'strategy': strategy, 'devices': n, 'mesh': 'x'.join(map(str, sizes))}
        try:
          partitioning.check_divisible(abstract, shardings[0])  # the moments follow
        except ValueError as e:
          row['note'] = _short(e)
          rows.append(row)
          continue
        per_device = partitioning.per_device_bytes((abstract, abstract_opt), shardings)
        row.update(per_device_GiB=round(per_device / 2**30, 3),
                   of_total=round(per_device / total, 3))
        rows.append(row)
  return rows


def mfu_rows() -> list[dict]:
  """The base model's MFU at each batch size on all local devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from genrec import partitioning, trainer  # pylint: disable=g-import-not-at-top
  kind = jax.devices()[0].device_kind
  peak = FLAGS.peak_tflops or peak_tflops(kind)
  config = base_config(FLAGS.base_vocab_size)
  mesh = partitioning.make_mesh()
  rows = []
  for batch_size in (int(b) for b in FLAGS.mfu_batch_sizes):
    tx, lr = trainer.make_optimizer(100, warmup_steps=1)
    tr = trainer.Trainer(config, tx, mesh, lr)
    state = tr.init_state(0)
    batch = partitioning.shard_batch(random_batch(config.vocab_size, batch_size), mesh)
    cost = tr.train_step.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get('flops', 0.0)) * jax.device_count()  # per device -> per step
    times, _ = timed_steps(tr, state, batch, FLAGS.steps, FLAGS.warmup)
    step_s = float(np.median(times))
    achieved = flops / step_s / 1e12
    rows.append({'model': 'base', 'device': partitioning.device_summary(),
                 'batch_size': batch_size, 'shape': f'{FLAGS.input_len}x{FLAGS.target_len}',
                 'median_step_ms': round(step_s * 1e3, 2),
                 'examples_per_s': round(batch_size / step_s, 1),
                 'TFLOP_per_step': round(flops / 1e12, 3),
                 'achieved_TFLOP_s': round(achieved, 2),
                 'peak_TFLOP_s': peak,
                 'mfu': None if peak is None else round(
                     achieved / (peak * jax.device_count()), 4)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def fit_rows() -> list[dict]:
  """Host-side identifier fitting time (numpy k-means, one host), per item.

  Random Gaussian content is the slow case: Lloyd's iterations run to their
  cap instead of settling.
  """
  from genrec import ids  # pylint: disable=g-import-not-at-top
  n = FLAGS.fit_items
  x = np.random.default_rng(0).standard_normal((n + 1, 384)).astype(np.float32)

  def random_content(data):
    del data
    return x
  scheme = ids.ResidualKMeansIds(num_levels=3, codebook_size=256, dedup=False,
                                 content_fn=random_content)
  t0 = time.perf_counter()
  scheme.fit(None)
  seconds = time.perf_counter() - t0
  return [{'fit': scheme.name, 'content': 'random 384-d', 'items': n,
           'seconds': round(seconds, 1),
           'seconds_per_million_items': round(seconds / n * 1e6, 1)}]


def main(argv):
  del argv
  if FLAGS.worker_output:
    return worker()
  # Fake CPU devices for the step table (no effect on an accelerator's devices).
  devices = max([int(d) for d in FLAGS.devices] or [1])
  if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={devices}').strip()
  import jax  # pylint: disable=g-import-not-at-top
  from genrec import partitioning, tables  # pylint: disable=g-import-not-at-top
  date = time.strftime('%Y-%m-%d')
  machine = f'{partitioning.device_summary()} (host: {tables.host_summary()})'
  command = 'python -m genrec.benchmarks.scaling ' + ' '.join(sys.argv[1:])
  unknown = set(FLAGS.tables) - {'memory', 'steps', 'mfu', 'id_fit'}
  if unknown:
    raise app.UsageError(f'Unknown --tables {sorted(unknown)}; use memory, steps, mfu, id_fit.')
  results = {}
  if 'memory' in FLAGS.tables:
    results['memory'] = memory_rows([int(d) for d in FLAGS.memory_devices], FLAGS.table_rows,
                                    FLAGS.table_dim, FLAGS.base_vocab_size)
  if 'steps' in FLAGS.tables:
    steps = step_rows(step_config())
    largest = max((r['devices'] for r in steps), default=0)
    if (FLAGS.processes > 1 and largest % FLAGS.processes == 0
        and jax.default_backend() == 'cpu'):
      steps += multiprocess_rows(largest)
    results['steps'] = steps
  if 'mfu' in FLAGS.tables:
    results['mfu'] = mfu_rows()
  if 'id_fit' in FLAGS.tables:
    results['id_fit'] = fit_rows()
  for rows in results.values():
    print(tables.markdown(rows), flush=True)
  if FLAGS.output_dir:
    for name, rows in results.items():
      for r in rows:
        r.update(machine=machine, date=date, commit=tables.source_commit(), command=command)
      tables.write(tables.markdown(rows), rows, FLAGS.output_dir, f'scaling_{name}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
