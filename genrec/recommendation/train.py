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
import importlib.util
import json
import os
import time
from collections.abc import Callable

from absl import logging
import jax
import numpy as np

from genrec import (checkpoints, config_check, constraints, loop, metrics, models,
                    partitioning, predictor, tables, trainer)
from genrec.data import sequences
from genrec.recommendation import features
from genrec.ids import AtomicIds, IdScheme, ItemIds, content


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def predict_items(pred: predictor.Predictor, params, inputs: np.ndarray, ids: ItemIds,
                  beam_size: int, batch_size: int,
                  trie: constraints.PrefixTrie | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The top `beam_size` items of every row of `inputs` (model features).

  Identifier models decode by beam search (constrained to `trie` if given);
  item-scoring models (projection head, SASRec) rank the catalog in one pass.

  Returns:
    (item ids int32 [n, beam_size], best first, 0 for an identifier that
    names no item; their scores float32 [n, beam_size]: beam log-probs, or
    the item logits).
  """
  # Models that score items from their identifiers read every item's tokens.
  catalog = (ids.token_table() if getattr(models.model_class(pred.config), 'eval_inputs', None)
             and pred.scores_items else None)

  def run(batch, rows):
    x = batch['x']
    if pred.scores_items:  # one pass over the catalog: exact top-k items
      items, scores = pred.rank_items(params, x, beam_size, with_scores=True, catalog=catalog)
      return partitioning.gather(items, rows), partitioning.gather(scores, rows)
    tokens, scores = pred.predict(params, x, beam_size, ids.num_levels, trie)
    return ids.tokens_to_items(partitioning.gather(tokens, rows)), partitioning.gather(
        scores, rows)
  outs = partitioning.map_batches({'x': inputs}, batch_size, pred.mesh, run)
  if not outs:
    return np.zeros((0, beam_size), np.int32), np.zeros((0, beam_size), np.float32)
  return (np.concatenate([o[0] for o in outs]).astype(np.int32),
          np.concatenate([o[1] for o in outs]).astype(np.float32))


def evaluate(pred: predictor.Predictor, params, arrays: dict[str, np.ndarray], ids: ItemIds,
             beam_size: int, batch_size: int, ks=metrics.DEFAULT_KS,
             trie: constraints.PrefixTrie | None = None
             ) -> tuple[dict[str, float], np.ndarray]:
  """`predict_items` for every example; full-catalog Recall/NDCG.

  Returns:
    (metrics, ranked item ids [n, beam_size] with 0 for invalid identifiers).
  """
  ranked, _ = predict_items(pred, params, arrays['encoder_input_tokens'], ids, beam_size,
                            batch_size, trie)
  return metrics.rank_metrics(ranked, arrays['target_item'], ks), ranked


RUN_CONFIG = 'run_config.json'  # what `infer` needs besides the ids and the checkpoint


def write_predictions(path: str, users, items: np.ndarray, scores: np.ndarray,
                      external: list[str] | None = None) -> None:
  """One JSON line per user: {"user", "items" (best first), "scores"}; items
  that name nothing (0, invalid identifiers) are left out; with `external`
  (item i's external id at index i) items are written as those ids. Process 0
  only."""
  if jax.process_index() > 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    for user, row, sc in zip(users, items, scores):
      keep = row > 0
      names = row[keep].tolist()
      if external is not None:
        names = [external[i] for i in names]
      f.write(json.dumps({'user': user, 'items': names,
                          'scores': [round(float(v), 6) for v in sc[keep]]}) + '\n')
  os.replace(path + '.tmp', path)


def _sample_users(arrays: dict[str, np.ndarray], n: int | None, seed: int
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """A seeded sample of `n` users of `arrays` (all of them when n is None or
  >= their number): their row indices, in order, and their rows."""
  total = len(arrays['target_item'])
  rows = (np.arange(total) if not n or n >= total else
          np.sort(np.random.default_rng(seed).choice(total, n, replace=False)))
  return rows, {k: v[rows] for k, v in arrays.items()}


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def item_scoring_arrays(arrays: dict[str, np.ndarray], ids: ItemIds, sasrec: bool
                        ) -> dict[str, np.ndarray]:
  """Features of item-scoring models: inputs and the target item id.

  SASRec reads item ids rather than identifier tokens, so its history tokens
  are mapped back to items (single-level identifiers only).
  """
  inputs = arrays['encoder_input_tokens']
  if 'target_item' in arrays:
    target = arrays['target_item']
  else:
    target = ids.tokens_to_items(arrays['decoder_target_tokens'][:, :ids.num_levels])
  if sasrec:
    if ids.num_levels != 1:
      raise ValueError(f'SASRec embeds item ids: use ID_SCHEME = @ids.AtomicIds(), not '
                       f'{ids.scheme!r} with {ids.num_levels} levels.')
    item_of_token = np.zeros(ids.vocab_size, np.int32)
    item_of_token[ids.token_table()[1:, 0]] = np.arange(1, ids.num_items + 1)
    inputs = item_of_token[inputs]
  return {'encoder_input_tokens': inputs, 'target_item': target.astype(np.int32)}


def model_inputs(arrays: dict[str, np.ndarray], ids: ItemIds,
                 config: models.ModelConfig) -> dict[str, np.ndarray]:
  """Leave-one-out features (`features.eval_arrays`, or the prefix training
  arrays) in the form the configured model reads: item ids for item-scoring
  models, histories 0-padded at the start for decoder-only models; models with their
  own conversion (`eval_inputs`, e.g. `models.ItemSidRec`) make theirs."""
  model_cls = models.model_class(config)
  if hasattr(model_cls, 'eval_inputs'):
    return {**arrays, 'encoder_input_tokens': model_cls.eval_inputs(
        arrays['encoder_input_tokens'], ids), 'target_item': item_scoring_arrays(
            arrays, ids, False)['target_item']}
  if config.num_items:
    arrays = item_scoring_arrays(arrays, ids, config.architecture == 'sasrec')
  if models.model_class(config).left_padded_inputs:
    arrays = {**arrays,
              'encoder_input_tokens': features.left_pad(arrays['encoder_input_tokens'])}
  return arrays


def training_arrays(data: sequences.SequenceData, ids: ItemIds, max_history: int,
                    config: models.TransformerConfig, prefix_arrays: dict | None
                    ) -> dict[str, np.ndarray]:
  """What the configured model trains on: one example per history prefix
  (`prefix_arrays`, from `load_arrays`) or, for sequence-level models, one
  per user window (`features.sequence_train_arrays`)."""
  model_cls = models.model_class(config)
  if hasattr(model_cls, 'training_arrays'):  # the model converts item windows itself
    return model_cls.training_arrays(features.sequence_train_arrays(
        data.train_sequences(), ids, max_history, item_ids=True), ids)
  if model_cls.training_examples == 'sequence':
    return features.sequence_train_arrays(data.train_sequences(), ids, max_history,
                                          item_ids=bool(config.num_items))
  return model_inputs(prefix_arrays, ids, config)


def load_arrays(data: sequences.SequenceData, ids: ItemIds, max_history: int,
                pipeline: str = 'auto', with_train: bool = True
                ) -> tuple[dict | None, dict, dict]:
  """Train (unless not `with_train`), validation and test model features of
  the leave-one-out task."""
  if pipeline == 'auto':
    pipeline = ('seqio' if all(importlib.util.find_spec(m) for m in ('seqio', 'tensorflow'))
                else 'numpy')
  if pipeline == 'seqio':
    from genrec.recommendation import tasks  # imports TensorFlow
    task = tasks.register_recommendation_task(data, ids, max_history)
    lengths = tasks.sequence_lengths(ids, max_history)
    return (tasks.load_train_arrays(task, lengths) if with_train else None,
            tasks.load_eval_arrays(task, 'validation', lengths),
            tasks.load_eval_arrays(task, 'test', lengths))
  if pipeline != 'numpy':
    raise ValueError(f"input_pipeline must be 'auto', 'seqio' or 'numpy', not {pipeline!r}.")
  logging.info('Input pipeline: numpy (seqio/TensorFlow not used)')
  splits = sequences.leave_one_out(data, max_history)
  lengths = features.sequence_lengths(ids, max_history)
  return (features.train_arrays(splits['train'], ids, lengths) if with_train else None,
          features.eval_arrays(splits['validation'], ids, lengths),
          features.eval_arrays(splits['test'], ids, lengths))


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
# The loop
# ---------------------------------------------------------------------------
def train(
    workdir: str,
    dataset: str | sequences.SequenceData = 'synthetic',
    data_dir: str | None = None,
    id_scheme: IdScheme = AtomicIds(),
    model_config: models.ModelConfig = models.TransformerConfig(),
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
    head: str = 'beam',
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
    id_scheme: how items become tokens.
    model_config: the model: its config class selects it (TransformerConfig:
      by its `architecture`; `models.ItemSidConfig`: the item-level
      Semantic-ID model) and holds its sizes (vocab_size and the other sizes
      that come from the data are filled in).
    optimizer_fn: num_train_steps -> (optax optimizer, learning-rate schedule).
    mesh_fn: () -> the device mesh.
    num_train_steps: total optimizer steps.
    batch_size: global batch size.
    max_history: history items kept per example.
    beam_size: beams decoded per user; must be >= the largest K (10).
    eval_every_steps: validation period; also saves a checkpoint with metrics.
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
    checkpoint_every_steps: period of checkpoints between evaluations.
    keep_checkpoints: latest checkpoints kept (the best one is kept as well).
    log_every_steps: period of the progress line and logged train metrics.
    seed: seeds the parameters, the data order and dropout.
    stop_after_step: end this invocation after that step (checkpointed), e.g.
      for time-sliced jobs; running the same command again resumes.
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
    head: 'beam' (decode identifiers by beam search) or 'projection' (score
      every item in one pass from the decoder state, Lite-LLM4Rec style; also
      what `architecture='sasrec'` models do, see gin/models/sasrec.gin). The
      model itself is `model_config.architecture` (gin): the encoder-decoder,
      the sequence-level 'decoder_only' model or 'sasrec' (genrec/models.py).
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
    early_stopping_evals: stop training once this many validation evaluations
      in a row have not raised validation NDCG@10 above its best (0: train all
      `num_train_steps`); the final metrics are the best checkpoint's either
      way. A stopped run is finished: running it again prints its results.
    max_train_seconds: also stop at the first evaluation after this many wall
      seconds of training steps (summed over invocations; 0: no limit), for
      comparisons at equal wall-clock; the run is finished as above.
    steps_per_call: optimizer steps per jitted call (a scan over that many
      batches; the same steps as one per call): for small models whose step
      is shorter than its dispatch from the host (e.g. SASRec on a GPU).
      num_train_steps and the eval, checkpoint and log periods must be
      multiples of it.
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
  if beam_size < max(metrics.DEFAULT_KS):
    raise ValueError(f'beam_size {beam_size} < {max(metrics.DEFAULT_KS)}: full-ranking '
                     'metrics need at least as many beams as the largest cut-off.')
  periods = dict(num_train_steps=num_train_steps, eval_every_steps=eval_every_steps,
                 checkpoint_every_steps=checkpoint_every_steps, log_every_steps=log_every_steps)
  uneven = {k: v for k, v in periods.items() if v % steps_per_call}
  if steps_per_call < 1 or uneven:
    raise ValueError(f'steps_per_call = {steps_per_call} must be >= 1 and divide '
                     f'{uneven or "the step counts"}: pick a divisor or change those periods.')
  loop.make_workdir(workdir)
  data = (dataset if isinstance(dataset, sequences.SequenceData)
          else sequences.load_dataset(dataset, data_dir))
  logging.info('Data %s: %d users, %d items', data.name, data.num_users, data.num_items)
  ids = fit_or_load_ids(id_scheme, data, os.path.join(workdir, 'ids'))
  keys_file = os.path.join(workdir, 'ids', 'item_keys.txt')
  if data.item_keys and not os.path.exists(keys_file) and jax.process_index() == 0:
    sequences.write_external_ids(keys_file, data.item_keys[1:])  # for export
  # dtype 'auto' is resolved here, so the run records (and infer rebuilds) the
  # dtype it trained with.
  if hasattr(model_config, 'resolve'):  # a config that fills in its own sizes
    config = model_config.resolve(ids, data.num_items, max_history)
  else:
    config = dataclasses.replace(model_config, vocab_size=ids.vocab_size,
                                 dtype=str(model_config.compute_dtype))
  if head not in ('beam', 'projection'):
    raise ValueError(f"head must be 'beam' or 'projection', not {head!r}.")
  if isinstance(config, models.TransformerConfig) and (
      head == 'projection' or config.architecture == 'sasrec'):
    config = dataclasses.replace(config, num_items=data.num_items, max_len=max_history)
  model_cls = models.model_class(config)
  if head == 'projection' and not hasattr(model_cls, 'score_items'):
    raise ValueError(f"head='projection' needs a model that scores items; architecture "
                     f"{config.architecture!r} decodes identifiers (use head='beam').")
  prefix_arrays, valid_arrays, test_arrays = load_arrays(
      data, ids, max_history, input_pipeline,
      with_train=model_cls.training_examples == 'prefix')
  train_arrays = training_arrays(data, ids, max_history, config, prefix_arrays)
  pack_info = None
  if pack_examples:
    if model_cls is not models.EncoderDecoder or config.scores_items:
      raise ValueError(
          'pack_examples packs the prefix examples of the encoder-decoder with a beam '
          f'head; {config.architecture!r} with head {head!r} trains on '
          f'{model_cls.training_examples!r} examples (decoder_only and sasrec pack their '
          'windows already): set train.train.pack_examples = False.')
    train_arrays, pack_info = features.pack_prefix_arrays(train_arrays, seed=seed)
  valid_arrays, test_arrays = (model_inputs(a, ids, config) for a in (valid_arrays, test_arrays))
  trie = (constraints.PrefixTrie.from_ids(ids)
          if constrained_decoding and not config.scores_items else None)
  if trie is not None:
    logging.info('Prefix trie: %s nodes per level, %.2f MiB on each device',
                 trie.num_nodes(), trie.memory_bytes() / 2**20)
  mesh = mesh_fn()
  dp = partitioning.data_parallel_size(mesh)
  if batch_size % (dp * jax.process_count()):
    raise ValueError(f'batch_size {batch_size} must be divisible by the data-parallel size '
                     f'{dp * jax.process_count()} of mesh {dict(mesh.shape)}.')
  rows_per_batch = batch_size
  if pack_info:
    per_row = pack_info['examples'] / pack_info['rows']
    rows_per_batch = features.packed_rows_per_batch(batch_size, pack_info,
                                                    dp * jax.process_count())
    logging.info('Packed %d examples into %d rows of %d encoder tokens (%.2f a row, %.0f%% '
                 'of the tokens used, %d decoder slots); %d rows a batch (~%d examples)',
                 pack_info['examples'], pack_info['rows'], pack_info['capacity'], per_row,
                 100 * pack_info['token_fill'], pack_info['max_per_row'], rows_per_batch,
                 round(rows_per_batch * per_row))
  tx, lr_fn = optimizer_fn(num_train_steps)
  constants_fn = getattr(model_cls, 'training_constants', None)
  tr = trainer.Trainer(config, tx, mesh, lr_fn,
                       constants=constants_fn(config, ids) if constants_fn else None)
  batcher = loop.EpochBatcher(len(next(iter(train_arrays.values()))), rows_per_batch, seed)
  num_train_examples = pack_info['examples'] if pack_info else batcher.num_examples
  logging.info('Model: %s, %.2fM parameters; %d train examples (%s level), %d steps/epoch; '
               'mesh %s', config, trainer.param_count(tr.abstract_state.params) / 1e6,
               num_train_examples, model_cls.training_examples, batcher.steps_per_epoch,
               dict(mesh.shape))

  loop.check_run_settings(workdir, {
      'dataset': data.name, 'num_items': data.num_items, 'num_users': data.num_users,
      'id_scheme': ids.scheme, 'model_config': dataclasses.asdict(config),
      'optimizer': loop.callable_settings(optimizer_fn), 'num_train_steps': num_train_steps,
      'batch_size': batch_size, 'max_history': max_history, 'seed': seed, 'head': head,
      'pack_examples': pack_examples},
      allow_config_change,
      defaults={'model_config': dataclasses.asdict(models.TransformerConfig()),
                'pack_examples': False})
  # After the settings check: a refused start must not touch the run's record.
  loop.write_json(os.path.join(workdir, RUN_CONFIG), {
      'model_config': dataclasses.asdict(config), 'model_class': type(config).__name__,
      'max_history': max_history,
      'beam_size': beam_size, 'item_scoring': config.scores_items,
      'constrained_decoding': constrained_decoding,
      'dataset': data.name, 'num_items': data.num_items})
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not retrain and os.path.exists(os.path.join(workdir, 'results.json')) and not (
      os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))):
    raise ValueError(_no_checkpoint_message(workdir))  # before orbax starts its threads
  manager, start, state, data_state = checkpoints.open_and_restore(
      ckpt_dir, tr.abstract_state, keep_checkpoints, fallback=checkpoint_fallback)
  try:
    if start is not None:
      batcher.check_resumable(data_state, os.path.join(workdir, 'checkpoints', str(start)))
      if start > num_train_steps:
        raise ValueError(f'{workdir} already holds a checkpoint of step {start}, beyond '
                         f'num_train_steps = {num_train_steps}: use a new --workdir for a '
                         'shorter run (results never claim more steps than were run).')
      logging.info('Resuming at step %d', start)
  except Exception:
    manager.close()
    raise
  history_path = os.path.join(workdir, 'eval_history.jsonl')
  train_seconds = float((data_state or {}).get('train_seconds', 0.0))

  def stop_reason(at_step: int, seconds: float) -> str | None:
    """Why training ends at the evaluation of `at_step` before its budget."""
    if early_stopping_evals > 0 and (
        evals_since_best(history_path, at_step) >= early_stopping_evals):
      return (f'validation NDCG@10 has not improved for {early_stopping_evals} '
              'evaluations')
    if 0 < max_train_seconds <= seconds:
      return f'{seconds:.0f} s of training reached max_train_seconds'
    return None
  # A run stops only at an evaluation: a checkpoint there may already be its end.
  finished = start == num_train_steps or (
      start is not None and start % eval_every_steps == 0 and
      stop_reason(start, train_seconds) is not None)
  if finished and os.path.exists(os.path.join(workdir, 'results.json')) and not reevaluate:
    manager.close()
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    logging.info('%s is finished (step %d); its results are kept as they are. Pass '
                 'reevaluate=True (gin: train.train.reevaluate = True) to evaluate again and '
                 'append a new entry to results_history.jsonl.', workdir, start)
    if jax.process_index() == 0:
      print(results_table(results), flush=True)
    return results
  if start is None:
    if os.path.exists(os.path.join(workdir, 'results.json')):
      if not retrain:
        manager.close()
        raise ValueError(_no_checkpoint_message(workdir))
      _set_aside_records(workdir)
    start = 0
    state = tr.init_state(seed)
  for log in ('train_log.jsonl', 'eval_history.jsonl'):  # steps the run logs again
    dropped = loop.truncate_jsonl(os.path.join(workdir, log), start)
    if dropped:
      logging.info('%s: dropped %d lines past step %d (they are logged again).', log,
                   dropped, start)
  loop.record_start(workdir, start)

  writer = loop.make_writer(os.path.join(workdir, 'tensorboard'))
  _, valid_sample = _sample_users(valid_arrays, num_eval_users, seed)
  # train_seconds: wall seconds spent in training steps (evaluations and
  # checkpoints excluded), summed over invocations through the checkpoints:
  # the x axis of time-to-quality curves.
  train_log = os.path.join(workdir, 'train_log.jsonl')
  rng = jax.random.key(seed + 1)
  t_start, step = time.time(), start
  window, progress = loop.DispatchWindow(), loop.Progress(num_train_steps, start)
  # A run that stopped early and was started again goes straight to its results.
  stopped_early, t_steps = finished, time.time()
  with loop.PreemptionWatch() as watch:
    while step < num_train_steps and not stopped_early:
      # Several steps per call from a step that is a multiple of steps_per_call
      # (a checkpoint written with another setting may sit in between).
      n = steps_per_call if step % steps_per_call == 0 else 1
      rows = partitioning.host_slice(rows_per_batch, mesh)
      if n == 1:
        idx = batcher.indices(step)[rows]
        batch = partitioning.shard_batch({k: v[idx] for k, v in train_arrays.items()}, mesh)
        state, train_metrics = tr.train_step(state, batch, rng)
      else:
        idx = [batcher.indices(step + i)[rows] for i in range(n)]
        batch = partitioning.shard_batch(
            {k: np.stack([v[i] for i in idx]) for k, v in train_arrays.items()}, mesh,
            stacked=True)
        state, train_metrics = tr.train_steps(state, batch, rng)
      window.push(train_metrics['loss'])
      step += n
      final = step == num_train_steps
      if step % eval_every_steps == 0 or final:
        window.drain()
        train_seconds += time.time() - t_steps
      logged = step % log_every_steps == 0 or final
      if logged or progress.due():  # by step, and at least every 30 s by time
        values = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
        so_far = train_seconds + (0.0 if step % eval_every_steps == 0 or final
                                  else time.time() - t_steps)
        rate = progress.log(step, values, (max_train_seconds - so_far) if max_train_seconds
                            else None, steps_to_stop=-step % eval_every_steps)
        if logged:
          writer.write_scalars(step, {f'train/{k}': v for k, v in values.items()}
                               | {'train/steps_per_sec': rate})
          loop.append_jsonl(train_log, {'step': step, **values})
      eval_metrics = None
      if step % eval_every_steps == 0 or final:
        t0 = time.time()
        m, _ = evaluate(tr, state.params, valid_sample, ids, beam_size, eval_batch_size,
                        trie=trie)
        eval_metrics = {f'validation/{k}': v for k, v in m.items()}
        logging.info('eval step %d (%d users, %.1fs): %s', step, len(valid_sample['target_item']),
                     time.time() - t0, loop.fmt_metrics(m))
        writer.write_scalars(step, eval_metrics)
        loop.append_jsonl(history_path, {
            'step': step, 'epoch': round(step / batcher.steps_per_epoch, 3),
            'train_seconds': round(train_seconds, 2), **eval_metrics})
        reason = None if final else stop_reason(step, train_seconds)
        if reason:
          stopped_early = True
          logging.info('Stopping at step %d: %s.', step, reason)
      stopping = stop_after_step is not None and step >= stop_after_step and not final
      if eval_metrics or step % checkpoint_every_steps == 0 or stopping:
        # Between evaluations the steps since the last one count too.
        so_far = train_seconds + (0.0 if eval_metrics else time.time() - t_steps)
        checkpoints.save(manager, step, state,
                         {**batcher.state(step), 'train_seconds': round(so_far, 2)},
                         eval_metrics)
      if eval_metrics:
        t_steps = time.time()
      if stopped_early:
        break
      if not final and watch.requested(step):
        window.drain()
        so_far = train_seconds + (0.0 if eval_metrics else time.time() - t_steps)
        checkpoints.save(manager, step, state,
                         {**batcher.state(step), 'train_seconds': round(so_far, 2)})
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        raise watch.stop(workdir, step)
      if stopping:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        logging.info('Stopped after step %d as asked; run again to resume.', step)
        return {'stopped_at_step': step}
  train_time = time.time() - t_start
  manager.wait_until_finished()

  best_step = manager.best_step() or manager.latest_step()
  if best_step != step:
    state, _ = checkpoints.restore(manager, best_step, tr.abstract_state)
  manager.close()
  results = {
      'dataset': data.name, 'id_scheme': ids.scheme, 'num_users': data.num_users,
      # What content-based identifiers were built from ('text', 'attributes'); None
      # for schemes without content (atomic, random, collaborative, precomputed).
      'id_content': (content.describe(id_scheme.content_fn, data)
                     if hasattr(id_scheme, 'content_fn') else None),
      'model': config.architecture + (' + projection head' if config.num_items and isinstance(
          config, models.TransformerConfig) and config.architecture != 'sasrec' else ''),
      'training_examples': model_cls.training_examples,
      'num_items': data.num_items,
      'num_train_examples': num_train_examples,
      'packed': {**pack_info, 'rows_per_batch': rows_per_batch} if pack_info else None,
      'params': trainer.param_count(state.params), 'num_train_steps': num_train_steps,
      'batch_size': batch_size, 'resumed_from_step': start or None,
      'train_time_s_this_invocation': round(train_time, 1),
      'device': partitioning.device_summary(), 'host': tables.host_summary(),
      # The invocation that wrote these results (a run continued with a larger
      # budget records the continuing command).
      'command': tables.command_line(), 'commit': tables.source_commit(),
      'last_step': step, 'stopped_early': step < num_train_steps,
      'epochs': round(step / batcher.steps_per_epoch, 2),
      'train_seconds': round(train_seconds, 1),
      'best_step': best_step, 'identifier_collisions': ids.num_collisions,
      'final_eval_users': final_eval_users, 'seed': seed,
  }
  item_slices = metrics.popularity_slices(data.item_target_counts(), *slice_fractions)
  popular = metrics.popularity_ranking(data.item_train_counts(), beam_size)
  final_arrays = {}
  for split, arrays in (('validation', valid_arrays), ('test', test_arrays)):
    users, arrays = _sample_users(arrays, final_eval_users, seed)
    final_arrays[split] = arrays
    targets = arrays['target_item']
    ranked, scores = predict_items(tr, state.params, arrays['encoder_input_tokens'], ids,
                                   beam_size, eval_batch_size, trie)
    m = metrics.rank_metrics(ranked, targets)
    write_predictions(os.path.join(workdir, 'predictions', f'{split}.jsonl'),
                      users.tolist(), ranked, scores)
    results[split] = m
    results[f'{split}_slices'] = metrics.sliced_metrics(ranked, targets, item_slices)
    pop_ranked = np.tile(popular, (len(targets), 1))
    results[f'popularity_{split}'] = metrics.rank_metrics(pop_ranked, targets)
    results[f'popularity_{split}_slices'] = metrics.sliced_metrics(pop_ranked, targets,
                                                                   item_slices)
  if trie is not None and report_unconstrained:
    results['test_unconstrained'], _ = evaluate(tr, state.params, final_arrays['test'], ids,
                                                beam_size, eval_batch_size)
  writer.write_scalars(num_train_steps, {f'final_{s}/{k}': v for s in ('validation', 'test')
                                         for k, v in results[s].items()})
  writer.flush()
  results['evaluated_at'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  # Written when steps were trained (a run continued past an earlier stop, e.g. with
  # a larger max_train_seconds, has new results); a re-evaluation of a finished run
  # only appends to the history.
  if step > (start or 0) or not os.path.exists(os.path.join(workdir, 'results.json')):
    loop.write_json(os.path.join(workdir, 'results.json'), results)
  loop.append_jsonl(os.path.join(workdir, 'results_history.jsonl'), results)
  loop.record_end(workdir, step)
  if jax.process_index() == 0:
    print(results_table(results), flush=True)
  return results


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


def results_table(results: dict) -> str:
  """A markdown table of the final metrics beside the popularity baseline."""
  keys = [k for k in results['test'] if k != 'invalid_rate'] + ['invalid_rate']
  lines = [f"## {results['dataset']} / {results['id_scheme']} (best step "
           f"{results['best_step']} of {results['num_train_steps']})", '',
           '| model | split | ' + ' | '.join(keys) + ' |',
           '|---|---|' + '---|' * len(keys)]
  for name, prefix in (('genrec', ''), ('popularity', 'popularity_')):
    for split in ('validation', 'test'):
      m = results[prefix + split]
      lines.append(f'| {name} | {split} | ' + ' | '.join(f'{m[k]:.4f}' for k in keys) + ' |')
  if 'test_unconstrained' in results:
    m = results['test_unconstrained']
    lines.append('| genrec, no constraints | test | '
                 + ' | '.join(f'{m[k]:.4f}' for k in keys) + ' |')
  lines += ['', 'Test by target-item popularity (training-target frequency):', '',
            '| model | slice | users | recall@10 | ndcg@10 |', '|---|---|---|---|---|']
  for name, prefix in (('genrec', ''), ('popularity', 'popularity_')):
    for slice_name, m in results.get(f'{prefix}test_slices', {}).items():
      lines.append(f"| {name} | {slice_name} | {m['users']} | {m['recall@10']:.4f} | "
                   f"{m['ndcg@10']:.4f} |")
  return '\n'.join(lines)
