"""Export a trained DSI document retriever to a serving directory.

  python main.py --gin_file=gin/runs/export_retriever.gin \
      --workdir=runs/retrieval/dsi_semantic

(one DSI method's folder of the retrieval run mode) writes <workdir>/serving/
(or EXPORT_DIR), laid out as `genrec.export_lib` describes: the retrieval
function as StableHLO (symbolic batch) and as a TensorFlow SavedModel, with
the parameters and the docid prefix trie inside, so that decoding is
constrained to docids that exist, on the device:

  query int32 [batch, input_len] (SentencePiece ids, 0-padded at the end)
      -> documents int32 [batch, k] (1-based document numbers, 0: none),
         scores float32 [batch, k] (beam log-probabilities)

Beside it: `spm.model` (the collection's SentencePiece model: tokenize the
query text with it, as `genrec.serve` does) and `items.tsv` (document number
-> the collection's document id).

SEAL's n-gram identifiers need the FM-index on the host at every decoding
step; they are not exported (use the retrieval run mode's infer).
"""

import json
import os

from absl import logging
import jax
import numpy as np
from flax import nnx

from genrec import constraints, decoding, export_lib, models, partitioning, predictor
from genrec.ids import ItemIds
from genrec.retrieval import docgen

TOKENIZER = 'spm.model'


def load(workdir: str, mesh_fn=partitioning.make_mesh):
  """(retrieval_run.json, model config, docids, Predictor, params, step) of a
  DSI run folder."""
  path = os.path.join(workdir, docgen.SERVING_RUN)
  if not all(os.path.exists(os.path.join(workdir, name))
             for name in (docgen.SERVING_RUN, docgen.DOC_IDS, docgen.SPM_MODEL)):
    raise ValueError(f'{workdir} lacks {docgen.SERVING_RUN}, {docgen.DOC_IDS} or '
                     f'{docgen.SPM_MODEL}: --workdir must be the folder of a trained DSI method '
                     '(dsi_atomic, dsi_naive or dsi_semantic) of the retrieval run mode, '
                     'e.g. runs/retrieval/dsi_semantic. SEAL runs are not exported.')
  with open(path) as f:
    run = json.load(f)
  config = models.TransformerConfig.from_json(run['model_config'])
  ids = ItemIds.load(os.path.join(workdir, 'ids'))
  pred = predictor.Predictor(config, mesh_fn())
  params, step = pred.restore_params(os.path.join(workdir, 'checkpoints'))
  return run, config, ids, pred, params, step


def export(workdir: str, output_dir: str | None = None, k: int | None = None,
           platforms: tuple[str, ...] = export_lib.PLATFORMS, saved_model: bool = True) -> str:
  """Writes the serving directory of a DSI run folder (module docstring).

  Args:
    workdir: one DSI method's folder of the retrieval run mode.
    output_dir: where (default <workdir>/serving); replaced if it exists.
    k: documents per query (default the run's beam size; at most that).
    platforms: lowering platforms (default CPU, CUDA and TPU).
    saved_model: also write the TensorFlow SavedModel.

  Returns:
    The serving directory.
  """
  run, config, ids, pred, params, step = load(workdir)
  beam, width = run['beam_size'], run['input_len']
  k = beam if k is None else k
  if not 1 <= k <= beam:
    raise ValueError(f'k must be in 1..{beam} (the run\'s beam size), not {k}.')
  trie = constraints.PrefixTrie.from_codes(ids.codes[1:], ids.level_sizes,
                                           ids.level_offsets + run['docid_token_shift'])
  arrays = {'params': jax.device_get(params), 'trie': jax.device_get(trie),
            'leaf_item': constraints.leaf_items(ids)}

  def function(top_k):
    def fn(arrays, query):
      model = nnx.merge(pred.graphdef, arrays['params'])
      return predictor.decode_items(model, query, arrays['trie'], arrays['leaf_item'], beam, k,
                                    True, top_k)
    return fn

  num_docs = run['num_docs']
  with open(os.path.join(workdir, docgen.SPM_MODEL), 'rb') as f:
    tokenizer = f.read()
  row = {}
  if os.path.exists(os.path.join(workdir, 'row.json')):  # the run mode's evaluation
    with open(os.path.join(workdir, 'row.json')) as f:
      row = json.load(f)
  warmup = tuple((np.arange(b * width, dtype=np.int32).reshape(b, width) % 50 + 3,)
                 for b in (1, 8))
  out = export_lib.write(
      output_dir or os.path.join(workdir, 'serving'), function(jax.lax.top_k), arrays,
      (export_lib.Tensor('query', 'int32', ('batch', width)),),
      (export_lib.Tensor('documents', 'int32', ('batch', k)),
       export_lib.Tensor('scores', 'float32', ('batch', k))), {
          'format': 'genrec-stablehlo-1', 'kind': 'retriever',
          'inputs': {'query': f'int32 [batch, {width}]: the query\'s SentencePiece ids '
                     f'({TOKENIZER}), 0-padded at the end (longer: keep the first {width})'},
          'outputs': {'documents': f'int32 [batch, {k}]: document numbers 1..{num_docs} '
                      '(items.tsv), best first (0: none)',
                      'scores': f'float32 [batch, {k}]: beam log-probabilities'},
          'k': k, 'beam_size': beam, 'input_len': width, 'num_items': num_docs,
          'method': run['method'], 'collection': run['collection'],
          'id_scheme': ids.scheme, 'id_levels': list(ids.level_sizes),
          'model_config': run['model_config'], 'checkpoint_step': step,
          'metrics_at_step': {m: v for m, v in row.items() if '@' in m},
          'tokenizer': TOKENIZER},
      version=step, platforms=platforms, saved_model_fn=function(decoding.sort_top_k),
      signatures=(export_lib.SIGNATURE, 'retrieve') if saved_model else (), warmup=warmup,
      files={TOKENIZER: tokenizer}, item_keys=os.path.join(workdir, docgen.DOC_IDS))
  logging.info('export: the %s retriever of %s (step %d) -> %s', run['method'], workdir, step,
               out)
  return out
