"""Export a recommendation run to a self-contained serving directory.

  python main.py --gin_file=gin/runs/export.gin --workdir=runs/quickstart

writes <workdir>/serving/ (or EXPORT_DIR):
  model.stablehlo  the whole recommendation function serialized with
                   `jax.export` (StableHLO), lowered for CPU, CUDA and TPU, with a
                   symbolic batch dimension: history item ids -> the top-k
                   item ids and their scores. Everything happens inside it:
                   item ids -> identifier tokens, the model, the (trie-
                   constrained) beam search or one-pass item scoring, and
                   identifier tokens -> item ids.
  arrays.npz       its arguments besides the histories, in order (arr_0, ...):
                   the checkpoint's parameters, the token table, the prefix
                   trie's bit/rank tables and the identifier -> item map.
  manifest.json    model config, identifier scheme, input/output contract,
                   checkpoint step and its metrics, genrec/jax/flax versions.
  items.tsv        item id <-> external id (e.g. ASIN), when the data has them.
  saved_model/<checkpoint step>/
                   the same function as a TensorFlow SavedModel (jax2tf, the
                   arrays as variables), signature `serving_default` (also
                   `recommend`): history int32 [batch, max_history] ->
                   {items, scores}; with a TF Serving warm-up request file in
                   assets.extra/. The step is the version directory TF
                   Serving expects: --model_base_path=<dir>/saved_model.

Written by `genrec.export_lib.write`; `genrec.artifact.Artifact` (jax and
numpy only) runs the StableHLO; TensorFlow (or TF Serving) loads the
SavedModel.
"""

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genrec import constraints, decoding, export_lib, models, predictor
from genrec.recommendation import infer

SIGNATURES = (export_lib.SIGNATURE, 'recommend')


def serving_function(graphdef, config: models.ModelConfig, k: int, beam_size: int,
                     constrained: bool, top_k: decoding.TopK = jax.lax.top_k):
  """fn(arrays: dict, history int32 [b, max_history]) -> (items int32 [b, k],
  scores float32 [b, k]): the whole recommendation on the device. History
  item ids are oldest first, 0-padded at the end; items that name nothing
  (0) never come out of a constrained search. `top_k`: `decoding.sort_top_k`
  for consumers with an older StableHLO (the SavedModel)."""
  model = models.model_for(config)

  def fn(arrays, history):
    module = nnx.merge(graphdef, arrays['params'])
    inputs = model.serving_inputs(history, arrays['token_table'])
    if not model.scores_items:
      return predictor.decode_items(module, inputs, arrays['trie'], arrays['leaf_item'],
                                    beam_size, k, constrained, top_k)
    top, items = top_k(model.score_items(module, inputs, arrays['token_table']), k)
    return items.astype(jnp.int32), top.astype(jnp.float32)
  return fn


def export(workdir: str, output_dir: str | None = None, k: int | None = None,
           step: int | None = None, platforms: tuple[str, ...] = export_lib.PLATFORMS,
           saved_model: bool = True) -> str:
  """Writes the serving directory of a training run (see the module docstring).

  Args:
    workdir: the training run's directory.
    output_dir: where (default <workdir>/serving); an export of another step
      there is replaced only with REPLACE (export_lib.write.replace).
    k: items returned per history (default the run's beam size; at most that).
    step: checkpoint step (default the run's best, else the latest).
    platforms: lowering platforms (default CPU, CUDA and TPU).
    saved_model: also write the TensorFlow SavedModel.

  Returns:
    The serving directory.
  """
  run, config, ids, pred, params, step = infer.load_run(workdir, step)
  beam, width = run['beam_size'], run['max_history']
  k = infer.resolve_k(run, k)
  constrained = run['constrained_decoding'] and not config.scores_items
  arrays = {'params': jax.device_get(params), 'token_table': ids.token_table().astype(np.int32)}
  if not config.scores_items:  # the trie maps identifiers to items (and constrains)
    arrays['trie'] = jax.device_get(constraints.PrefixTrie.from_ids(ids))
    arrays['leaf_item'] = constraints.leaf_items(ids)
  fn, portable_fn = (serving_function(pred.graphdef, config, k, beam, constrained, top_k)
                     for top_k in (jax.lax.top_k, decoding.sort_top_k))
  results = {}
  if os.path.exists(os.path.join(workdir, 'results.json')):
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = json.load(f)
    if saved.get('best_step') == step:
      results = {s: saved[s] for s in ('validation', 'test') if s in saved}
  warmup = tuple((_example_histories(batch, width, ids.num_items),) for batch in (1, 8))
  out = export_lib.write(
      output_dir or os.path.join(workdir, 'serving'), fn, arrays,
      (export_lib.Tensor('history', 'int32', ('batch', width)),),
      (export_lib.Tensor('items', 'int32', ('batch', k)),
       export_lib.Tensor('scores', 'float32', ('batch', k))), {
          'format': 'genrec-stablehlo-1', 'kind': 'recommender',
          'inputs': {'history': f'int32 [batch, {width}]: item ids 1..{ids.num_items}, oldest '
                     'first, 0-padded at the end (longer histories: keep the most recent)'},
          'outputs': {'items': f'int32 [batch, {k}] best first (0: none)',
                      'scores': f'float32 [batch, {k}]: '
                                + models.model_for(config).score_kind},
          'k': k, 'beam_size': beam, 'max_history': width,
          'constrained_decoding': constrained, 'num_items': ids.num_items,
          'id_scheme': ids.scheme, 'id_levels': list(ids.level_sizes),
          'model': models.model_for(config).name, 'model_config': run['model_config'],
          'dataset': run['dataset'],
          'checkpoint_step': step, 'metrics_at_step': results},
      version=step, platforms=platforms, saved_model_fn=portable_fn,
      signatures=SIGNATURES if saved_model else (), warmup=warmup,
      item_keys=os.path.join(workdir, 'ids', 'item_keys.txt'))
  logging.info('export: step %d of %s -> %s', step, workdir, out)
  return out


def _example_histories(batch: int, width: int, num_items: int) -> np.ndarray:
  """Short histories of valid item ids (TF Serving warm-up requests)."""
  history = np.zeros((batch, width), np.int32)
  for row in range(batch):
    history[row, :min(row + 1, width)] = np.arange(min(row + 1, width)) % num_items + 1
  return history


