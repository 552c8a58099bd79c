"""New (cold-start) items added to a trained recommender without retraining it.

  python main.py --gin_file=gin/runs/add_items.gin \
      --gin_bindings="RECOMMENDER='runs/beauty_item_sid'" \
      --gin_bindings="ITEMS='new_items.jsonl'" --workdir=runs/beauty_item_sid_added

`add` reads a training run's directory (`RECOMMENDER`) and the new items'
text (`ITEMS`: item_text.jsonl lines {"item": id, "title", "brand",
"categories", "description"}), and writes into --workdir a run directory of
the same layout (infer, export and the server read it as they read the
original) in which:

* every old item keeps its id and Semantic ID; the new items follow them
  (ids N + 1 ...; a run on a data-set folder with its own item ids takes the
  new items' ids from "item" and appends them to ids/item_keys.txt);
* a new item's Semantic ID comes from the run's identifier scheme applied to
  its text embedding (`genrec.ids.extend`: product quantization with the
  fitted quantizer, residual or hierarchical k-means with the centroids of
  the old items' content, plus a collision number), so the trained model
  scores it through its codes exactly as it scores old items: the item-level
  model's exact catalog ranking and the trie of constrained decoding both
  include it;
* tables with one row per item (the item-id embedding) get zero rows for the
  new items (no interaction taught them anything); the code table grows
  only if the collision level does.

With `EXPORT` (default) the serving directory is written too
(<workdir>/serving, `genrec.recommendation.export`). Models that know an item
only by its own embedding (SASRec, atomic ids) cannot rank an item they were
not trained on, and are refused.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable

from absl import logging
import gin
import jax
import numpy as np

from genrec import checkpoints, config_check, loop, models, partitioning, tables
from genrec.data import sequences
from genrec.ids import content
from genrec.ids import extend as extend_ids
from genrec.recommendation import export as recommendation_export
from genrec.recommendation import evaluate, infer

ITEM_KEYS = 'item_keys.txt'


def read_new_items(path: str, known: set[str], num_items: int
                   ) -> tuple[list[str], list[dict]]:
  """(the new items' keys, their text fields) of an item_text.jsonl file;
  a key the run already has, or a duplicate, is refused by name."""
  keys, fields = [], []
  for where, obj in sequences.json_objects(path, '{"item": id, "title": ..., "brand": ..., '
                                           '"categories": [...]}'):
    key = obj.get('item')
    if isinstance(key, bool) or not isinstance(key, (int, str)) or key == '':
      raise sequences.DataError(f'{where}: "item" must be the new item\'s id (a string, or '
                                f'an integer for runs with numbered items), got {key!r}.')
    key = str(key)
    if key in known or (key.isdigit() and 1 <= int(key) <= num_items and not known):
      raise sequences.DataError(f'{where}: item {key!r} is already in the recommender\'s '
                                'catalog; list new items only.')
    if key in keys:
      raise sequences.DataError(f'{where}: item {key!r} is listed twice.')
    keys.append(key)
    fields.append(obj)
  if not keys:
    raise sequences.DataError(f'{path}: no items; the file is empty.')
  return keys, fields


def text_content(fields: list[dict]) -> np.ndarray:
  """MiniLM embeddings [n, 384] of items' "title; brand; categories" text,
  as `content.text_embeddings` embeds the catalog's."""
  from genrec import text_encoder  # the encoder only when items are added
  holder = type('Items', (), {'item_text': (None, *fields)})
  return text_encoder.encode(content.item_text_strings(holder))


@gin.configurable(denylist=['workdir'])
def add(workdir: str, recommender: str = gin.REQUIRED, items: str = gin.REQUIRED,
        old_item_text: str | None = None, export: bool = True,
        export_fn: Callable[[str], str] = recommendation_export.export,
        mesh_fn=partitioning.make_mesh) -> dict:
  """Adds the items of `items` to the recommender in `recommender`, writing
  the updated run directory into `workdir` (module docstring).

  Args:
    workdir: the new run directory.
    recommender: the trained run's directory.
    items: the new items' text (item_text.jsonl lines).
    old_item_text: the item_text.jsonl the run was trained on; needed by
      k-means identifiers (their centroids are the old items' mean content),
      not by product quantization.
    export: also write <workdir>/serving, by `export_fn(workdir)` (gin:
      `@export.export`, whose own bindings apply).

  Returns:
    Figures of the update (also <workdir>/add_items.json).
  """
  config_check.check_arguments(add, dict(locals()))
  if os.path.abspath(workdir) == os.path.abspath(recommender):
    raise ValueError(f'--workdir is the recommender\'s own folder ({recommender}): the updated '
                     'recommender goes into a new folder, so that the trained one stays intact.')
  t_start = time.time()
  run, config, ids, pred, params, step = infer.load_run(recommender, mesh_fn=mesh_fn)
  kind = ids.scheme.split('-')[0]
  if kind in ('atomic', 'sequential', 'random') or (
      not getattr(config, 'level_sizes', None) and getattr(config, 'num_items', 0)):
    raise ValueError(f'{recommender} knows each item by an embedding of its own ({ids.scheme} '
                     'identifiers or an item-embedding model such as SASRec): a new item has '
                     'no trained row to rank it with. Adding items needs content-based '
                     'Semantic IDs (e.g. ProductQuantizationIds or ResidualKMeansIds of the '
                     'item text).')
  results = os.path.join(recommender, 'results.json')
  if os.path.exists(results):
    with open(results) as f:
      if json.load(f).get('id_content', 'text') != 'text':
        raise ValueError(f'{recommender}\'s identifiers were fit on item attributes, not text: '
                         'new items are coded from their text embedding, which that scheme '
                         'never saw. Train on item text to add items later.')
  keys_path = os.path.join(recommender, 'ids', ITEM_KEYS)
  old_keys = sequences.read_lines(keys_path) if os.path.exists(keys_path) else None
  keys, fields = read_new_items(items, set(old_keys or ()), ids.num_items)
  if old_keys is None and not all(k.isdigit() for k in keys):
    raise sequences.DataError(f'{items}: this run numbers its items 1..{ids.num_items}; the '
                              'new items are numbered after them in file order, so "item" '
                              'must be an integer (any).')
  t0 = time.time()
  new_content = text_content(fields)
  old_content = None
  if kind in ('rqkmeans', 'hkmeans'):
    if not old_item_text:
      raise ValueError(f'{ids.scheme} identifiers place new items by the centroids of the old '
                       "items' content: pass OLD_ITEM_TEXT, the item_text.jsonl the run was "
                       'trained on.')
    by_key = {str(o['item']): o for _, o in sequences.json_objects(old_item_text, 'item text')}
    order = old_keys or [str(i) for i in range(1, ids.num_items + 1)]
    old_content = text_content([by_key.get(k, {}) for k in order])
  encode_s = time.time() - t0
  grown = extend_ids.extend(ids, len(keys), new_content, old_content)
  n_old, n_new = ids.num_items, grown.num_items
  fields_new = {'level_sizes': tuple(int(s) for s in grown.level_sizes),
                'vocab_size': max(config.vocab_size, grown.vocab_size)}
  if getattr(config, 'num_items', 0):
    fields_new['num_items'] = n_new
  if getattr(config, 'item_id_buckets', 0) == n_old + 1:  # one id row per item
    fields_new['item_id_buckets'] = n_new + 1
  new_config = dataclasses.replace(config, **{k: v for k, v in fields_new.items()
                                              if hasattr(config, k)})
  # New items' id rows are zero; new code tokens (a grown collision level)
  # start as the mean token.
  host = models.grow_params(jax.tree.map(np.array, jax.device_get(params)), new_config,
                            {'table_rows': models.grow_zeros, 'vocab': models.grow_mean()})
  loop.make_workdir(workdir)
  if jax.process_index() == 0:
    grown.save(os.path.join(workdir, 'ids'))
    if old_keys is not None:
      sequences.write_external_ids(os.path.join(workdir, 'ids', ITEM_KEYS), old_keys + keys)
  loop.write_json(os.path.join(workdir, evaluate.RUN_CONFIG), {
      **run, 'model_config': dataclasses.asdict(new_config), 'num_items': n_new,
      'items_added': len(keys), 'added_to': os.path.abspath(recommender)})
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'), keep=1,
                                     best_metric=None)
  checkpoints.save(manager, step, {'params': host}, {'step': step, 'items_added': len(keys)})
  manager.wait_until_finished()
  manager.close()
  info = {'recommender': recommender, 'step': step, 'items_before': n_old,
          'items_added': len(keys), 'id_scheme': grown.scheme,
          'new_items_sharing_codes': int(grown.num_collisions),
          'encode_s': round(encode_s, 1), 'total_s': round(time.time() - t_start, 1),
          'new_item_ids': {k: n_old + 1 + i for i, k in enumerate(keys)}, **tables.provenance()}
  loop.write_json(os.path.join(workdir, 'add_items.json'), info)
  if export and jax.process_index() == 0:
    info['serving'] = export_fn(workdir)
  logging.info('add_items: %d items added to %s (%d before) -> %s', len(keys), recommender,
               n_old, workdir)
  return info
