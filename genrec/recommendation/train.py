"""The training loop: data -> identifiers -> sharded training -> beam-search
evaluation -> checkpoints -> results.

`train()`'s keyword arguments are the config surface; gin files in gin/
bind them. A run directory holds:
  config.gin        the operative gin config
  ids/              the fitted item identifiers (reused when the run resumes)
  checkpoints/      orbax checkpoints (latest N + best by validation NDCG@10)
  tensorboard/      scalars
  train_log.jsonl   training metrics at every logging step
  run_config.json   the model config and settings `infer` rebuilds the model from
  eval_history.jsonl  validation metrics at every evaluation
  results.json      validation/test metrics of the best checkpoint
  predictions/      {validation,test}.jsonl: every user's top items and scores
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable

from absl import logging
import jax
import numpy as np

from genrec import (checkpoints, config_check, constraints, loop, metrics, models,
                    partitioning, tables, trainer)
from genrec.data import sequences
from genrec.recommendation import evaluate, features
from genrec.ids import AtomicIds, IdScheme, ItemIds, content


def fit_or_load_ids(scheme: IdScheme, data: sequences.SequenceData, directory: str
                    ) -> ItemIds:
  """Loads the run's identifier artifact, or fits the scheme and saves it."""
  if os.path.exists(os.path.join(directory, 'ids.json')):
    ids = ItemIds.load(directory)
    if ids.num_items != data.num_items or ids.scheme != scheme.name:
      raise ValueError(f'{directory} holds identifiers of scheme {ids.scheme!r} for '
                       f'{ids.num_items} items, but this run asks for {scheme.name!r} on '
                       f'{data.num_items} items; use a new --workdir.')
    logging.info('Loaded %s identifiers from %s', ids.scheme, directory)
    return ids
  t0 = time.time()
  ids = scheme.fit(data)
  logging.info('Fitted %s identifiers in %.1fs: %d levels %s, %d collisions', ids.scheme,
               time.time() - t0, ids.num_levels, ids.level_sizes, ids.num_collisions)
  if jax.process_index() == 0:
    ids.save(directory)
  return ids


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def train(
    workdir: str,
    dataset: str | sequences.SequenceData = 'synthetic',
    data_dir: str | None = None,
    id_scheme: IdScheme = AtomicIds(),
    model: models.Model = models.EncoderDecoderModel(),
    optimizer_fn: Callable = trainer.make_optimizer,
    mesh_fn: Callable = partitioning.make_mesh,
    num_train_steps: int = 1000,
    batch_size: int = 256,
    max_history: int = 20,
    beam_size: int = 10,
    eval_every_steps: int = 500,
    num_eval_users: int | None = None,
    final_eval_users: int | None = None,
    eval_batch_size: int = 512,
    checkpoint_every_steps: int = 500,
    keep_checkpoints: int = 3,
    log_every_steps: int = 100,
    seed: int = 0,
    stop_after_step: int | None = None,
    input_pipeline: str = 'auto',
    constrained_decoding: bool = True,
    report_unconstrained: bool = True,
    slice_fractions: tuple[float, float] = (0.2, 0.5),
    checkpoint_fallback: bool = True,
    reevaluate: bool = False,
    retrain: bool = False,
    allow_config_change: bool = False,
    early_stopping_evals: int = 0,
    max_train_seconds: float = 0.0,
    steps_per_call: int = 1,
    pack_examples: bool = False,
) -> dict:
  """Trains and evaluates a generative recommender; resumes from `workdir`.

  Args:
    workdir: the run directory (see the module docstring).
    dataset: 'synthetic' or an Amazon 2014 set ('beauty', 'sports', 'toys'), or
      the data itself (gin: `DATASET = @sequences.make_synthetic()` with its
      own bindings, e.g. `sequences.make_synthetic.num_users = 500`).
    data_dir: folder holding amazon-2014/; defaults to $GENREC_DATA_DIR.
    num_train_steps, eval_every_steps, checkpoint_every_steps, log_every_steps,
      steps_per_call, early_stopping_evals, max_train_seconds, stop_after_step:
      the run's `loop.Schedule` (see there): evaluations on validation users
      save a checkpoint with their metrics; the final metrics are the best
      checkpoint's. A run stopped by early stopping or its time budget is
      finished (running it again prints its results); one stopped by
      `stop_after_step` or a signal resumes with the same command.
    id_scheme: how items become tokens.
    model: the model class with its config (gin: `MODEL = @models.SASRecModel()`,
      gin/models/*.gin): it builds the module and converts the data into its
      inputs; the sizes that come from the data (vocab_size, num_items, ...)
      are filled in (`models.Model.resolve`).
    optimizer_fn: num_train_steps -> (optax optimizer, learning-rate schedule).
    mesh_fn: () -> the device mesh.
    batch_size: global batch size.
    max_history: history items kept per example.
    beam_size: beams decoded per user; must be >= the largest K (10).
    num_eval_users: validation users sampled during training (None: all); the
      final validation and test evaluations use every user unless
      `final_eval_users` says otherwise.
    final_eval_users: users of the final validation and test evaluations
      (None: every user, the metrics of record). A seeded sample of that many
      (the same users for every run with the same seed) makes the final
      metrics an estimate, for comparisons where a full beam-search pass over
      every user costs more than the training (e.g. time-to-quality runs on a
      CPU); results record it.
    eval_batch_size: users per evaluation batch.
    keep_checkpoints: latest checkpoints kept (the best one is kept as well).
    seed: seeds the parameters, the data order and dropout.
    input_pipeline: 'seqio' (the registered seqio Task), 'numpy' (the same
      arrays without TensorFlow, see `genrec.recommendation.features`) or 'auto' (seqio when
      seqio and TensorFlow are installed).
    constrained_decoding: decode only identifiers that exist (a prefix trie on
      the device, `genrec.constraints`); else free beam search, whose invalid
      identifiers count in `invalid_rate`.
    report_unconstrained: with constrained decoding, also evaluate the test
      split without constraints (results 'test_unconstrained'), so the
      invalid-ID rate the constraints remove is on record.
    slice_fractions: (head, tail) fractions of the items seen as training
      targets, by frequency, for the popularity slices of the final metrics
      (`metrics.popularity_slices`; unseen items form their own slice).
    checkpoint_fallback: when the newest checkpoint is unreadable, move it aside
      and resume from the newest readable one (else stop with the error).
    reevaluate: evaluate a finished run again (a new entry in
      results_history.jsonl); by default a finished run only prints its results.
    retrain: train a finished run again although its checkpoints are gone
      (deleted, or none readable): its records (results, logs) are first
      moved to previous/<time>/ in the run directory. Without it such a run is
      refused, so that results are never silently replaced.
    allow_config_change: resume although settings that change what the saved
      steps mean differ from the run's first start (the change is recorded in
      settings_changes.jsonl); also set by main.py --allow_config_change.
    pack_examples: with the encoder-decoder's prefix examples, several
      examples share a row, told apart by segment ids so that each attends to
      itself only (as T5X packs; `features.pack_prefix_arrays`): most
      histories are far shorter than `max_history`, and a row per example is
      mostly padding (Amazon Beauty with 4-token IDs: ~2.9 examples a row,
      ~2.5x fewer tokens). A batch then holds batch_size / (examples per row)
      rows, rounded up to the data-parallel size, so a recipe keeps its steps
      per epoch and, on average, its examples per step.

  Returns:
    The results dict (also written to workdir/results.json).
  """
  config_check.check_arguments(train, dict(locals()))
  schedule = loop.Schedule(
      num_train_steps, eval_every_steps, checkpoint_every_steps, log_every_steps=log_every_steps,
      steps_per_call=steps_per_call, early_stopping_evals=early_stopping_evals,
      max_train_seconds=max_train_seconds, stop_after_step=stop_after_step)
  _check_settings(schedule, beam_size)
  loop.make_workdir(workdir)
  run = _setup(workdir, dataset, data_dir, id_scheme, model, max_history,
               input_pipeline, pack_examples, constrained_decoding, seed, mesh_fn,
               batch_size, optimizer_fn, num_train_steps)
  _record_settings(workdir, run, allow_config_change, optimizer_fn=optimizer_fn,
                   num_train_steps=num_train_steps, batch_size=batch_size,
                   max_history=max_history, seed=seed, pack_examples=pack_examples,
                   beam_size=beam_size, constrained_decoding=constrained_decoding)
  manager, start, state, train_seconds, finished = _open_run(
      workdir, run, schedule, keep_checkpoints, checkpoint_fallback, retrain, reevaluate)
  if finished == 'results':
    return _print_results(workdir, start)
  start, state = (0, run.trainer.init_state(seed)) if start is None else (start, state)
  _begin(workdir, start)
  writer = loop.make_writer(os.path.join(workdir, 'tensorboard'))
  t_start = time.time()
  try:
    outcome = (loop.Outcome(state, start, train_seconds, {}, 'early') if finished else
               _train_steps(workdir, run, schedule, manager, state, start, writer,
                            train_seconds, num_eval_users, beam_size, eval_batch_size, seed))
  except BaseException:
    manager.close()
    writer.flush()
    raise
  if outcome.stopped == 'asked':
    manager.close()
    writer.flush()
    logging.info('Stopped after step %d as asked; run again to resume.', outcome.step)
    return {'stopped_at_step': outcome.step}
  results = _final_results(workdir, run, manager, outcome, start, time.time() - t_start,
                           writer, id_scheme=id_scheme, num_train_steps=num_train_steps,
                           batch_size=batch_size, final_eval_users=final_eval_users,
                           seed=seed, beam_size=beam_size, eval_batch_size=eval_batch_size,
                           slice_fractions=slice_fractions,
                           report_unconstrained=report_unconstrained)
  _record_results(workdir, results, outcome.step > start)
  return results


@dataclasses.dataclass
class _Run:
  """What a run trains and evaluates, built from its settings."""
  data: sequences.SequenceData
  ids: ItemIds
  model: models.Model
  train: dict[str, np.ndarray]
  valid: dict[str, np.ndarray]
  test: dict[str, np.ndarray]
  pack_info: dict | None
  trie: constraints.PrefixTrie | None
  mesh: object
  rows_per_batch: int
  trainer: trainer.Trainer
  batcher: loop.EpochBatcher

  @property
  def config(self) -> models.ModelConfig:
    return self.model.config

  @property
  def num_train_examples(self) -> int:
    return self.pack_info['examples'] if self.pack_info else self.batcher.num_examples


def _check_settings(schedule: loop.Schedule, beam_size: int) -> None:
  if beam_size < max(metrics.DEFAULT_KS):
    raise ValueError(f'beam_size {beam_size} < {max(metrics.DEFAULT_KS)}: full-ranking '
                     'metrics need at least as many beams as the largest cut-off.')
  periods = dict(num_train_steps=schedule.num_train_steps,
                 eval_every_steps=schedule.eval_every_steps,
                 checkpoint_every_steps=schedule.checkpoint_every_steps,
                 log_every_steps=schedule.log_every_steps)
  uneven = {k: v for k, v in periods.items() if v % schedule.steps_per_call}
  if schedule.steps_per_call < 1 or uneven:
    raise ValueError(f'steps_per_call = {schedule.steps_per_call} must be >= 1 and divide '
                     f'{uneven or "the step counts"}: pick a divisor or change those periods.')


def _setup(workdir, dataset, data_dir, id_scheme, model, max_history,
           input_pipeline, pack_examples, constrained_decoding, seed, mesh_fn, batch_size,
           optimizer_fn, num_train_steps) -> _Run:
  """Data, identifiers, model config, arrays, trie, mesh and trainer of a run."""
  data = (dataset if isinstance(dataset, sequences.SequenceData)
          else sequences.load_dataset(dataset, data_dir))
  logging.info('Data %s: %d users, %d items', data.name, data.num_users, data.num_items)
  ids = fit_or_load_ids(id_scheme, data, os.path.join(workdir, 'ids'))
  keys_file = os.path.join(workdir, 'ids', 'item_keys.txt')
  if data.item_keys and not os.path.exists(keys_file) and jax.process_index() == 0:
    sequences.write_external_ids(keys_file, data.item_keys[1:])  # for export
  model = model.resolve(ids, data.num_items, max_history)
  prefix_arrays, valid_arrays, test_arrays = features.load_arrays(
      data, ids, max_history, input_pipeline,
      with_train=model.training_examples == 'prefix')
  train_arrays = model.training_arrays(data, ids, max_history, prefix_arrays)
  pack_info = None
  if pack_examples:
    if not model.packs_prefix_examples:
      raise ValueError(
          'pack_examples packs the prefix examples of the encoder-decoder that decodes '
          f'identifiers; {model.name} does not read packed rows (sequence models such as '
          'decoder_only and sasrec pack their windows already): set '
          'train.train.pack_examples = False.')
    train_arrays, pack_info = features.pack_prefix_arrays(train_arrays, seed=seed)
  valid_arrays, test_arrays = (model.model_inputs(a, ids) for a in (valid_arrays, test_arrays))
  trie = (constraints.PrefixTrie.from_ids(ids)
          if constrained_decoding and not model.scores_items else None)
  if trie is not None:
    logging.info('Prefix trie: %s nodes per level, %.2f MiB on each device',
                 trie.num_nodes(), trie.memory_bytes() / 2**20)
  mesh = mesh_fn()
  rows_per_batch = _rows_per_batch(batch_size, pack_info, mesh)
  tx, lr_fn = optimizer_fn(num_train_steps)
  tr = trainer.Trainer(model.config, tx, mesh, lr_fn,
                       constants=model.training_constants(ids))
  batcher = loop.EpochBatcher(len(next(iter(train_arrays.values()))), rows_per_batch, seed)
  run = _Run(data, ids, model, train_arrays, valid_arrays, test_arrays,
             pack_info, trie, mesh, rows_per_batch, tr, batcher)
  logging.info('Model: %s, %.2fM parameters; %d train examples (%s level), %d steps/epoch; '
               'mesh %s', model, trainer.param_count(tr.abstract_state.params) / 1e6,
               run.num_train_examples, model.training_examples, batcher.steps_per_epoch,
               dict(mesh.shape))
  return run


def _rows_per_batch(batch_size: int, pack_info: dict | None, mesh) -> int:
  """Rows of a global batch: `batch_size` examples, in packed rows if packed."""
  unit = partitioning.data_parallel_size(mesh) * jax.process_count()
  if batch_size % unit:
    raise ValueError(f'batch_size {batch_size} must be divisible by the data-parallel size '
                     f'{unit} of mesh {dict(mesh.shape)}.')
  if not pack_info:
    return batch_size
  per_row = pack_info['examples'] / pack_info['rows']
  rows = features.packed_rows_per_batch(batch_size, pack_info, unit)
  logging.info('Packed %d examples into %d rows of %d encoder tokens (%.2f a row, %.0f%% '
               'of the tokens used, %d decoder slots); %d rows a batch (~%d examples)',
               pack_info['examples'], pack_info['rows'], pack_info['capacity'], per_row,
               100 * pack_info['token_fill'], pack_info['max_per_row'], rows,
               round(rows * per_row))
  return rows


def _open_run(workdir: str, run: _Run, schedule: loop.Schedule, keep_checkpoints: int,
              checkpoint_fallback: bool, retrain: bool, reevaluate: bool):
  """Opens the run's checkpoints and says where it stands.

  Returns:
    (manager, start step or None, state, training seconds so far, finished):
    finished is 'results' for a finished run whose results are only printed,
    True for a finished run evaluated again, False otherwise.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  has_results = os.path.exists(os.path.join(workdir, 'results.json'))
  if not retrain and has_results and not (
      os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))):
    raise ValueError(_no_checkpoint_message(workdir))  # before orbax starts its threads
  manager, start, state, data_state = checkpoints.open_and_restore(
      ckpt_dir, run.trainer.abstract_state, keep_checkpoints, fallback=checkpoint_fallback)
  try:
    if start is not None:
      run.batcher.check_resumable(data_state, os.path.join(ckpt_dir, str(start)))
      if start > schedule.num_train_steps:
        raise ValueError(f'{workdir} already holds a checkpoint of step {start}, beyond '
                         f'num_train_steps = {schedule.num_train_steps}: use a new --workdir '
                         'for a shorter run (results never claim more steps than were run).')
      logging.info('Resuming at step %d', start)
    train_seconds = float((data_state or {}).get('train_seconds', 0.0))
    # A run stops only at an evaluation: a checkpoint there may already be its end.
    finished = start == schedule.num_train_steps or (
        start is not None and schedule.evaluates_at(start) and schedule.stop_reason(
            os.path.join(workdir, 'eval_history.jsonl'), start, train_seconds) is not None)
    if finished and has_results and not reevaluate:
      manager.close()
      return manager, start, state, train_seconds, 'results'
    if start is None and has_results:
      if not retrain:
        raise ValueError(_no_checkpoint_message(workdir))
      _set_aside_records(workdir)
  except Exception:
    manager.close()
    raise
  return manager, start, state, train_seconds, finished


def _print_results(workdir: str, step: int) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  logging.info('%s is finished (step %d); its results are kept as they are. Pass '
               'reevaluate=True (gin: train.train.reevaluate = True) to evaluate again and '
               'append a new entry to results_history.jsonl.', workdir, step)
  if jax.process_index() == 0:
    print(evaluate.results_table(results), flush=True)
  return results


def _begin(workdir: str, start: int) -> None:
  """Drops log lines past `start` (the steps the run logs again); records the start."""
  for log in ('train_log.jsonl', 'eval_history.jsonl'):
    dropped = loop.truncate_jsonl(os.path.join(workdir, log), start)
    if dropped:
      logging.info('%s: dropped %d lines past step %d (they are logged again).', log,
                   dropped, start)
  loop.record_start(workdir, start)


def _train_steps(workdir: str, run: _Run, schedule: loop.Schedule, manager, state,
                 start: int, writer, train_seconds: float, num_eval_users: int | None,
                 beam_size: int, eval_batch_size: int, seed: int) -> loop.Outcome:
  """The training steps from `start`, with validation on a sample of users."""
  _, valid_sample = evaluate.sample_users(run.valid, num_eval_users, seed)
  rng = jax.random.key(seed + 1)

  def step_fn(state, step: int, n: int):
    rows = partitioning.host_slice(run.rows_per_batch, run.mesh)
    if n == 1:
      idx = run.batcher.indices(step)[rows]
      batch = partitioning.shard_batch({k: v[idx] for k, v in run.train.items()}, run.mesh)
      return run.trainer.train_step(state, batch, rng)
    idx = [run.batcher.indices(step + i)[rows] for i in range(n)]
    batch = partitioning.shard_batch(
        {k: np.stack([v[i] for i in idx]) for k, v in run.train.items()}, run.mesh,
        stacked=True)
    return run.trainer.train_steps(state, batch, rng)

  def eval_fn(state, step: int) -> dict:
    t0 = time.time()
    m, _ = evaluate.evaluate(run.trainer, state.params, valid_sample, run.ids, beam_size,
                             eval_batch_size, trie=run.trie)
    logging.info('eval step %d (%d users, %.1fs): %s', step,
                 len(valid_sample['target_item']), time.time() - t0, loop.fmt_metrics(m))
    return {f'validation/{k}': v for k, v in m.items()}

  return loop.run_steps(workdir, schedule, manager, state, start, run.batcher, step_fn,
                        eval_fn, train_seconds=train_seconds, writer=writer,
                        log_path=os.path.join(workdir, 'train_log.jsonl'),
                        history_path=os.path.join(workdir, 'eval_history.jsonl'))


def _record_settings(workdir: str, run: '_Run', allow_config_change: bool, *,
                     optimizer_fn: Callable, num_train_steps: int, batch_size: int,
                     max_history: int, seed: int, pack_examples: bool,
                     beam_size: int, constrained_decoding: bool) -> None:
  """Checks the settings against the run's first start (`loop.check_run_settings`),
  then writes what `infer` rebuilds the model from."""
  loop.check_run_settings(workdir, {
      'dataset': run.data.name, 'num_items': run.data.num_items,
      'num_users': run.data.num_users, 'id_scheme': run.ids.scheme,
      'model': run.model.name, 'model_config': dataclasses.asdict(run.config),
      'optimizer': loop.callable_settings(optimizer_fn), 'num_train_steps': num_train_steps,
      'batch_size': batch_size, 'max_history': max_history, 'seed': seed,
      'pack_examples': pack_examples},
      allow_config_change,
      defaults={'model_config': dataclasses.asdict(models.EncoderDecoderConfig()),
                'pack_examples': False}, legacy=models.legacy_settings)
  # After the settings check: a refused start must not touch the run's record.
  loop.write_json(os.path.join(workdir, evaluate.RUN_CONFIG), {
      'model_config': dataclasses.asdict(run.config), 'model_class': type(run.config).__name__,
      'max_history': max_history, 'beam_size': beam_size,
      'item_scoring': run.config.scores_items, 'constrained_decoding': constrained_decoding,
      'dataset': run.data.name, 'num_items': run.data.num_items})


def _final_results(workdir: str, run: '_Run', manager, outcome: loop.Outcome, start: int,
                   train_time: float, writer, *, id_scheme: IdScheme, num_train_steps: int,
                   batch_size: int, final_eval_users: int | None, seed: int, beam_size: int,
                   eval_batch_size: int, slice_fractions: tuple[float, float],
                   report_unconstrained: bool) -> dict:
  """The best checkpoint's metrics of record and the run's record."""
  best_step = manager.best_step() or manager.latest_step()
  state = (outcome.state if best_step == outcome.step else
           checkpoints.restore(manager, best_step, run.trainer.abstract_state)[0])
  manager.close()
  results = _run_record(run, id_scheme, outcome, start, best_step, train_time,
                        num_train_steps, batch_size, final_eval_users, seed)
  results.update(evaluate.final_results(
      run.trainer, state.params, {'validation': run.valid, 'test': run.test}, run.ids,
      beam_size, eval_batch_size, run.trie, workdir=workdir,
      item_slices=metrics.popularity_slices(run.data.item_target_counts(), *slice_fractions),
      popular=metrics.popularity_ranking(run.data.item_train_counts(), beam_size),
      users=final_eval_users, seed=seed, report_unconstrained=report_unconstrained))
  writer.write_scalars(num_train_steps, {f'final_{s}/{k}': v for s in ('validation', 'test')
                                         for k, v in results[s].items()})
  writer.flush()
  return results


def _run_record(run: _Run, id_scheme: IdScheme, outcome: loop.Outcome, start: int,
                best_step: int, train_time: float, num_train_steps: int, batch_size: int,
                final_eval_users: int | None, seed: int) -> dict:
  """What the results record of the run besides its metrics."""
  step = outcome.step
  return {
      'dataset': run.data.name, 'id_scheme': run.ids.scheme, 'num_users': run.data.num_users,
      # What content-based identifiers were built from ('text', 'attributes'); None
      # for schemes without content (atomic, random, collaborative, precomputed).
      'id_content': (content.describe(id_scheme.content_fn, run.data)
                     if hasattr(id_scheme, 'content_fn') else None),
      'model': run.model.name,
      'training_examples': run.model.training_examples,
      'num_items': run.data.num_items,
      'num_train_examples': run.num_train_examples,
      'packed': ({**run.pack_info, 'rows_per_batch': run.rows_per_batch}
                 if run.pack_info else None),
      'params': trainer.param_count(outcome.state.params), 'num_train_steps': num_train_steps,
      'batch_size': batch_size, 'resumed_from_step': start or None,
      'train_time_s_this_invocation': round(train_time, 1),
      'device': partitioning.device_summary(), 'host': tables.host_summary(),
      # The invocation that wrote these results (a run continued with a larger
      # budget records the continuing command).
      'command': tables.command_line(), 'commit': tables.source_commit(),
      'last_step': step, 'stopped_early': step < num_train_steps,
      'epochs': round(step / run.batcher.steps_per_epoch, 2),
      'train_seconds': round(outcome.train_seconds, 1),
      'best_step': best_step, 'identifier_collisions': run.ids.num_collisions,
      'final_eval_users': final_eval_users, 'seed': seed,
  }


def _record_results(workdir: str, results: dict, trained: bool) -> None:
  results['evaluated_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  # Written when steps were trained (a run continued past an earlier stop, e.g. with
  # a larger max_train_seconds, has new results); a re-evaluation of a finished run
  # only appends to the history.
  if trained or not os.path.exists(os.path.join(workdir, 'results.json')):
    loop.write_json(os.path.join(workdir, 'results.json'), results)
  loop.append_jsonl(os.path.join(workdir, 'results_history.jsonl'), results)
  loop.record_end(workdir, results['last_step'])
  if jax.process_index() == 0:
    print(evaluate.results_table(results), flush=True)


def _no_checkpoint_message(workdir: str) -> str:
  return (f'{workdir} holds the results of a finished run but no readable checkpoint '
          '(checkpoints/ was deleted or is unreadable), so it cannot be resumed or '
          're-evaluated. Its results stay as they are. To train it again from step 0, pass '
          'train.train.retrain=True (the old records move to previous/), or use a new '
          '--workdir.')


def _set_aside_records(workdir: str) -> None:
  """Moves a finished run's records to previous/<time>/ before it trains again."""
  if jax.process_index() > 0:
    return
  aside = os.path.join(workdir, 'previous', time.strftime('%Y%m%d-%H%M%S'))
  os.makedirs(aside, exist_ok=True)
  for name in ('results.json', 'results_history.jsonl', 'train_log.jsonl',
               'eval_history.jsonl', 'predictions', 'tensorboard'):
    if os.path.exists(os.path.join(workdir, name)):
      os.replace(os.path.join(workdir, name), os.path.join(aside, name))
  logging.warning('retrain=True: the records of the finished run moved to %s.', aside)
