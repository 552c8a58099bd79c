"""The infer run mode: a trained recommender's checkpoint -> top-k items for
the histories of an input file (`python main.py --gin_file=gin/runs/infer.gin
--workdir=RUN --gin_bindings="INPUT_FILE='histories.jsonl'"`).

Needs nothing but the training run's directory: `run_config.json` (the model
config), `ids/` (the identifiers) and `checkpoints/` (parameters only are
read, no optimizer). Input: one JSON object per line, {"user": any id,
"history": [item ids, oldest first]}. Output: one line per input line,
{"user", "items" (best first), "scores"}, the same format as the training
run's predictions/test.jsonl. A run trained on a data-set folder with its own
(string) item ids (interactions.tsv) takes and returns those ids, as the
server does; other runs use item ids 1..N.
"""

import json
import os

from absl import logging
import numpy as np

from genrec import constraints, loop, models, partitioning, predictor
from genrec.data import sequences
from genrec.ids import ItemIds
from genrec.recommendation import evaluate, features


def read_histories(path: str, num_items: int, external: list[str] | None = None
                   ) -> tuple[list, list[np.ndarray]]:
  """(users, histories) of a JSON-lines file; errors name the file and line.

  With `external` (the run's item map: external id of item i at index i, from
  a data-set folder with string ids) the histories hold those ids, as the
  server takes them; otherwise item ids 1..num_items.
  """
  users, histories = [], []
  internal = None if external is None else {k: i for i, k in enumerate(external) if i}
  kind = 'item ids (strings or integers of the data set)' if internal else 'integer item ids'
  for where, obj in sequences.json_objects(path, '{"user": ..., "history": [item ids]}'):
    hist = obj.get('history')
    if not isinstance(hist, list) or not hist or not all(
        isinstance(i, (int, str) if internal else int) and not isinstance(i, bool)
        for i in hist):
      raise sequences.DataError(f'{where}: "history" must be a non-empty list of {kind}, '
                                f'got {str(hist)[:80]}.')
    if internal is not None:
      unknown = [i for i in hist if str(i) not in internal]
      if unknown:
        raise sequences.DataError(f'{where}: unknown item {unknown[0]!r}: not in the items '
                                  'the run was trained on (its ids/item_keys.txt); drop '
                                  'unknown items from the history.')
      hist = [internal[str(i)] for i in hist]
    bad = [i for i in hist if not 1 <= i <= num_items]
    if bad:
      raise sequences.DataError(f'{where}: unknown item {bad[0]}: the model knows items '
                                f'1..{num_items}; drop unknown items from the history.')
    users.append(obj.get('user', int(where.rsplit(':', 1)[1])))
    histories.append(np.asarray(hist, np.int32))
  if not users:
    raise sequences.DataError(f'{path}: no histories; the file is empty.')
  return users, histories


def load_run(workdir: str, step: int | None = None, mesh_fn=partitioning.make_mesh):
  """What inference needs from a training run directory.

  Returns:
    (run_config.json, the model config, the item identifiers, a Predictor,
    the parameters of `step` (default the run's best, else the latest), step).
  """
  path = os.path.join(workdir, evaluate.RUN_CONFIG)
  if not os.path.exists(path):
    raise ValueError(f'{path} not found: --workdir must be the run directory of a finished '
                     'or checkpointed training run (python main.py --gin_file=gin/runs/...).')
  with open(path) as f:
    run = json.load(f)
  config = models.config_from_json(run['model_config'],
                                   run.get('model_class', 'TransformerConfig'))
  ids = ItemIds.load(os.path.join(workdir, 'ids'))
  if step is None and os.path.exists(os.path.join(workdir, 'results.json')):
    with open(os.path.join(workdir, 'results.json')) as f:
      step = json.load(f).get('best_step')
  pred = predictor.Predictor(config, mesh_fn())
  params, step = pred.restore_params(os.path.join(workdir, 'checkpoints'), step)
  return run, config, ids, pred, params, step


def resolve_k(run: dict, k: int | None) -> int:
  """Items per history: default the run's beam size, at most that."""
  beam = run['beam_size']
  k = beam if k is None else k
  if not 1 <= k <= beam:
    raise ValueError(f'k must be in 1..{beam} (the beam size the run was trained with), not {k}.')
  return k


def infer(workdir: str, input_file: str, output_file: str | None = None, k: int | None = None,
          step: int | None = None, batch_size: int = 256,
          mesh_fn=partitioning.make_mesh) -> str:
  """Writes the top-k items of every history in `input_file`.

  Args:
    workdir: the training run's directory.
    input_file: JSON lines {"user", "history"} (see the module docstring).
    output_file: where the predictions go (default
      <workdir>/predictions/<input name>.predictions.jsonl).
    k: items per user (default the run's beam size; at most that).
    step: checkpoint step (default the run's best step, else the latest).
    batch_size: histories per device batch.
    mesh_fn: the device mesh.

  Returns:
    The output path.
  """
  run, config, ids, pred, params, step = load_run(workdir, step, mesh_fn)
  beam = run['beam_size']
  k = resolve_k(run, k)

  keys_file = os.path.join(workdir, 'ids', 'item_keys.txt')
  external = None
  if os.path.exists(keys_file):  # a folder with its own item ids: speak them, as the server
    with open(keys_file) as f:
      external = [''] + f.read().splitlines()
  users, histories = read_histories(input_file, ids.num_items, external)
  split = sequences.pack_split([h[-run['max_history']:] for h in histories],
                               [0] * len(histories), run['max_history'])
  arrays = features.eval_arrays(split, ids, features.sequence_lengths(ids, run['max_history']))
  arrays = models.model_for(config).model_inputs(arrays, ids)
  trie = (constraints.PrefixTrie.from_ids(ids)
          if run['constrained_decoding'] and not run['item_scoring'] else None)
  items, scores = evaluate.predict_items(pred, params, arrays['encoder_input_tokens'], ids, beam,
                                      batch_size, trie)
  out = output_file or os.path.join(
      workdir, 'predictions',
      os.path.splitext(os.path.basename(input_file))[0] + '.predictions.jsonl')
  evaluate.write_predictions(out, users, items[:, :k], scores[:, :k], external)
  logging.info('infer: %d histories, step %d of %s -> %s', len(users), step, workdir, out)
  loop.append_jsonl(os.path.join(workdir, 'infer_log.jsonl'),
                    {'input': os.path.abspath(input_file), 'output': os.path.abspath(out),
                     'step': step, 'k': k, 'users': len(users)})
  return out
