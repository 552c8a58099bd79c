"""Export a recommendation run to a self-contained serving directory.

  python main.py --gin_file=gin/runs/export.gin --workdir=runs/quickstart

writes <workdir>/serving/ (or EXPORT_DIR):
  model.stablehlo  the whole recommendation function serialized with
                   `jax.export` (StableHLO), lowered for CPU and CUDA, with a
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

`genrec.recommendation.artifact.Artifact` (jax and numpy only) runs one.
"""

import json
import os
import shutil
import time
from importlib import metadata

from absl import logging
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genrec import constraints, decoding, loop, models
from genrec.ids import ItemIds
from genrec.recommendation import infer
from genrec.recommendation.artifact import MANIFEST

ARTIFACT = 'model.stablehlo'
ARRAYS = 'arrays.npz'
ITEMS = 'items.tsv'


def _left_pad(tokens: jax.Array) -> jax.Array:
  """Device version of `features.left_pad`."""
  count = (tokens > 0).sum(axis=1, keepdims=True)
  index = (jnp.arange(tokens.shape[1])[None] + count) % tokens.shape[1]
  return jnp.take_along_axis(tokens, index, axis=1)


def leaf_items(ids: ItemIds) -> np.ndarray:
  """int32 [leaves]: the item id of every leaf of `PrefixTrie.from_ids(ids)`
  (leaves are the distinct identifiers in lexicographic order; with
  collisions the lowest item id, as `ItemIds.tokens_to_items`)."""
  _, first = np.unique(ids.codes[1:], axis=0, return_index=True)
  return (first + 1).astype(np.int32)


def trie_tokens_to_items(trie: constraints.PrefixTrie, leaf_item: jax.Array,
                         tokens: jax.Array) -> jax.Array:
  """Device `ItemIds.tokens_to_items`: walks the prefix trie; 0 where the
  tokens [..., L] are not an identifier."""
  node = jnp.zeros(tokens.shape[:-1], jnp.int32)
  ok = jnp.ones(tokens.shape[:-1], bool)
  for level in range(trie.num_levels):
    code = tokens[..., level] - trie.level_offsets[level]
    ok &= (code >= 0) & (code < trie.level_sizes[level])
    code = jnp.clip(code, 0, trie.level_sizes[level] - 1)
    word = trie.bits[level][node, code // 32]
    ok &= ((word >> (code % 32).astype(jnp.uint32)) & jnp.uint32(1)).astype(bool)
    node = jnp.where(ok, trie.child(node, level, code), 0)
  return jnp.where(ok, leaf_item[jnp.clip(node, 0, leaf_item.shape[0] - 1)], 0)


def serving_function(graphdef, config: models.TransformerConfig, ids: ItemIds,
                     k: int, beam_size: int, constrained: bool):
  """fn(arrays: dict, history int32 [b, max_history]) -> (items int32 [b, k],
  scores float32 [b, k]): the whole recommendation on the device. History
  item ids are oldest first, 0-padded at the end; items that name nothing
  (0) never come out of a constrained search."""
  model_cls = models.model_class(config)
  levels = ids.num_levels

  def fn(arrays, history):
    model = nnx.merge(graphdef, arrays['params'])
    b = history.shape[0]
    if config.architecture == 'sasrec':
      scores = model.score_items(history)
    else:
      tokens = arrays['token_table'][history].reshape(b, -1)
      if model_cls.left_padded_inputs:
        tokens = _left_pad(tokens)
      if config.num_items:
        scores = model.score_items(tokens)
      else:
        tokens_to_logits, cache = model.beam_search_inputs(tokens, beam_size, levels)
        trie = arrays['trie']
        seqs, beam_scores = decoding.beam_search(
            tokens_to_logits, cache, b, beam_size, levels,
            trie.constrain if constrained else None)
        items = trie_tokens_to_items(trie, arrays['leaf_item'], seqs)
        return items[:, :k], beam_scores[:, :k].astype(jnp.float32)
    top, items = jax.lax.top_k(scores, k)
    return items.astype(jnp.int32), top.astype(jnp.float32)
  return fn


def export(workdir: str, output_dir: str | None = None, k: int | None = None,
           step: int | None = None, platforms: tuple[str, ...] = ('cpu', 'cuda')) -> str:
  """Writes the serving directory of a training run (see the module docstring).

  Args:
    workdir: the training run's directory.
    output_dir: where (default <workdir>/serving); replaced if it exists.
    k: items returned per history (default the run's beam size; at most that).
    step: checkpoint step (default the run's best, else the latest).
    platforms: lowering platforms of the StableHLO ('cpu', 'cuda', 'tpu').

  Returns:
    The serving directory.
  """
  run, config, ids, pred, params, step = infer.load_run(workdir, step)
  beam = run['beam_size']
  k = infer.resolve_k(run, k)
  constrained = run['constrained_decoding'] and not config.num_items
  arrays = {'params': jax.device_get(params), 'token_table': ids.token_table().astype(np.int32)}
  if not config.num_items:  # the trie maps identifiers to items (and constrains)
    arrays['trie'] = jax.device_get(constraints.PrefixTrie.from_ids(ids))
    arrays['leaf_item'] = leaf_items(ids)
  fn = serving_function(pred.graphdef, config, ids, k, beam, constrained)
  leaves, treedef = jax.tree.flatten(arrays)

  def flat_fn(leaves, history):
    return fn(jax.tree.unflatten(treedef, leaves), history)

  batch = jax_export.symbolic_shape('batch')[0]
  history = jax.ShapeDtypeStruct((batch, run['max_history']), jnp.int32)
  t0 = time.time()
  exported = jax_export.export(jax.jit(flat_fn), platforms=platforms)(
      [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves], history)
  logging.info('Exported for %s in %.1fs', platforms, time.time() - t0)

  out = output_dir or os.path.join(workdir, 'serving')
  tmp = out.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, ARTIFACT), 'wb') as f:
    f.write(exported.serialize())
  np.savez(os.path.join(tmp, ARRAYS), *[np.asarray(x) for x in leaves])
  keys_file = os.path.join(workdir, 'ids', 'item_keys.txt')
  if os.path.exists(keys_file):
    with open(keys_file) as f, open(os.path.join(tmp, ITEMS), 'w') as g:
      g.write('item_id\texternal_id\n')
      for i, key in enumerate(f.read().splitlines(), 1):
        g.write(f'{i}\t{key}\n')
  results = {}
  if os.path.exists(os.path.join(workdir, 'results.json')):
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = json.load(f)
    if saved.get('best_step') == step:
      results = {s: saved[s] for s in ('validation', 'test') if s in saved}
  loop.write_json(os.path.join(tmp, MANIFEST), {
      'format': 'genrec-stablehlo-1', 'artifact': ARTIFACT, 'arrays': ARRAYS,
      'num_arrays': len(leaves), 'platforms': list(platforms),
      'inputs': {'history': f'int32 [batch, {run["max_history"]}]: item ids 1..'
                 f'{ids.num_items}, oldest first, 0-padded at the end (longer histories: '
                 'keep the most recent)'},
      'outputs': {'items': f'int32 [batch, {k}] best first (0: none)',
                  'scores': f'float32 [batch, {k}]: ' + (
                      'item logits' if config.num_items else 'beam log-probabilities')},
      'k': k, 'beam_size': beam, 'max_history': run['max_history'],
      'constrained_decoding': constrained, 'num_items': ids.num_items,
      'id_scheme': ids.scheme, 'id_levels': list(ids.level_sizes),
      'model_config': run['model_config'], 'dataset': run['dataset'],
      'checkpoint_step': step, 'metrics_at_step': results,
      'item_map': ITEMS if os.path.exists(os.path.join(tmp, ITEMS)) else None,
      'versions': {p: _version(p) for p in ('genrec', 'jax', 'jaxlib', 'flax')},
      'exported_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  })
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  logging.info('export: step %d of %s -> %s', step, workdir, out)
  return out


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None
