"""Export a trained Semantic-ID ranker to a serving directory.

  python main.py --gin_file=gin/runs/export_ranker.gin \
      --workdir=runs/ranking/beauty/spm_sid_4000

(one run folder of the ranking run mode) writes <workdir>/serving/ (or
EXPORT_DIR), laid out as `genrec.export_lib` describes: the scoring function
as StableHLO (symbolic batch and candidate count) and as a TensorFlow
SavedModel, with the parameters and the item -> table-row features inside:

  (history int32 [batch, max_history], candidates int32 [batch, candidates])
      -> scores float32 [batch, candidates]

item ids as in training (0: padding, in either input), a score the logit of
P(engage | history, candidate). The item's keys (hashed Semantic-ID n-grams
or SentencePiece pieces) were computed at training time for every item, new
(cold-start) ones included, so no SentencePiece runs at serving time.
"""

import json
import os

from absl import logging
import jax
import numpy as np
from flax import nnx

from genrec import checkpoints, export_lib, loop
from genrec.ranking import ranker


def load(workdir: str):
  """(settings, RankerConfig, graphdef, params, features npz dict, step) of a
  ranking run folder."""
  path = os.path.join(workdir, loop.SETTINGS_FILE)
  features = os.path.join(workdir, ranker.FEATURES)
  if not os.path.exists(path) or not os.path.exists(features):
    raise ValueError(f'{workdir} is not a trained ranking run folder ({loop.SETTINGS_FILE} '
                     f'and {ranker.FEATURES} are written when it trains): give one of '
                     'the folders of the ranking run mode, e.g. '
                     'runs/ranking/beauty/spm_sid_4000.')
  with open(path) as f:
    settings = json.load(f)
  config = ranker.RankerConfig(**{
      key.split('.', 1)[1]: tuple(v) if isinstance(v, list) else v
      for key, v in settings.items() if key.startswith('config.')})
  graphdef, abstract = nnx.split(ranker.abstract_ranker(config, settings['table_rows']))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          nnx.to_pure_dict(abstract))
  params, step = checkpoints.restore_params(os.path.join(workdir, 'checkpoints'), abstract)
  with np.load(features) as z:
    feats = {'rows': z['rows'].astype(np.int32), 'mask': z['mask']}
  return settings, config, graphdef, params, feats, step


def export(workdir: str, output_dir: str | None = None,
           platforms: tuple[str, ...] = export_lib.PLATFORMS, saved_model: bool = True) -> str:
  """Writes the serving directory of a ranking run folder (module docstring).

  Args:
    workdir: one trained run folder of the ranking run mode.
    output_dir: where (default <workdir>/serving); an export of another step
      there is replaced only with REPLACE (export_lib.write.replace).
    platforms: lowering platforms (default CPU, CUDA and TPU).
    saved_model: also write the TensorFlow SavedModel.

  Returns:
    The serving directory.
  """
  settings, config, graphdef, params, feats, step = load(workdir)
  width, num_items = settings['max_history'], len(feats['rows']) - 1

  def fn(arrays, history, candidates):
    model = nnx.merge(graphdef, arrays['params'])
    return (model(history, candidates, arrays['rows'], arrays['mask']),)

  row = {}
  if os.path.exists(os.path.join(workdir, 'row.json')):  # the run mode's evaluation
    with open(os.path.join(workdir, 'row.json')) as f:
      row = json.load(f)
  warmup = []
  for batch, count in ((1, 10), (8, 100)):
    items = np.arange(batch * (width + count)) % num_items + 1
    warmup.append((items[:batch * width].reshape(batch, width).astype(np.int32),
                   items[batch * width:].reshape(batch, count).astype(np.int32)))
  out = export_lib.write(
      output_dir or os.path.join(workdir, 'serving'), fn,
      {'params': jax.device_get(params), **feats},
      (export_lib.Tensor('history', 'int32', ('batch', width)),
       export_lib.Tensor('candidates', 'int32', ('batch', 'candidates'))),
      (export_lib.Tensor('scores', 'float32', ('batch', 'candidates')),), {
          'format': 'genrec-stablehlo-1', 'kind': 'ranker',
          'inputs': {'history': f'int32 [batch, {width}]: item ids 1..{num_items}, oldest '
                     'first, 0-padded at the end (longer histories: keep the most recent)',
                     'candidates': f'int32 [batch, candidates]: item ids 1..{num_items} to '
                     'score (0: padding, its score means nothing)'},
          'outputs': {'scores': 'float32 [batch, candidates]: logits of P(engage)'},
          'max_history': width, 'num_items': num_items, 'variant': settings['variant'],
          'table_rows': settings['table_rows'], 'model_config': {
              k.split('.', 1)[1]: v for k, v in settings.items() if k.startswith('config.')},
          'sid_scheme': settings.get('sid_scheme'), 'dataset': settings['dataset'],
          'checkpoint_step': step,
          'metrics_at_step': {k: v for k, v in row.items() if '/' in k}},
      version=step, platforms=platforms, signatures=('serving_default', 'rank') if saved_model
      else (), warmup=tuple(warmup),
      item_keys=os.path.join(workdir, ranker.ITEM_KEYS))
  logging.info('export: the ranker of %s (step %d) -> %s', workdir, step, out)
  return out
