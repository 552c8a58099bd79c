"""Export a trained document retriever (DSI or SEAL) to a serving directory.

  python main.py --gin_file=gin/runs/export_retriever.gin \
      --workdir=runs/retrieval/dsi_semantic     (or .../seal)

(one method's folder of the retrieval run mode) writes <workdir>/serving/
(or EXPORT_DIR), laid out as `genrec.export_lib` describes, with the query
tokenizer (`genrec.serve` tokenizes the query text with it: the collection's
SentencePiece model `spm.model`, or for runs of the pretrained encoder
(`models.BertEncoderDecoderModel`) its WordPiece `tokenizer.json`, read with
the `tokenizers` package) and `items.tsv` (document number -> the
collection's document id) beside it.

DSI: the retrieval function as StableHLO (symbolic batch) and as a
TensorFlow SavedModel, with the parameters and the docid prefix trie inside,
so that decoding is constrained to docids that exist, on the device:

  query int32 [batch, input_len] (SentencePiece ids, 0-padded at the end)
      -> documents int32 [batch, k] (1-based document numbers, 0: none),
         scores float32 [batch, k] (beam log-probabilities)

SEAL: n-grams are constrained by the FM-index over the corpus, on the host,
between decoding steps, so the directory holds the two device functions of
that loop as StableHLO (`model.stablehlo` starts it from the query,
`step.stablehlo` advances every beam by one token given the allowed tokens),
the FM-index (fm_index/) and the scorer's settings; `genrec.seal.SealRetriever`
runs the loop and scores the documents exactly as the run's evaluation does.
There is no SavedModel: TF Serving cannot run the host side of the loop.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genrec import constraints, decoding, export_lib, models, partitioning, predictor
from genrec.ids import ItemIds
from genrec.retrieval import run_folder


def tokenizer_file(workdir: str) -> tuple[str, str]:
  """(file name, kind) of a run folder's query tokenizer: ('spm.model',
  'sentencepiece'), or ('tokenizer.json', 'wordpiece') for runs of the
  pretrained encoder; ('', '') when it has neither."""
  for name, kind in ((run_folder.SPM_MODEL, 'sentencepiece'), (run_folder.WORDPIECE, 'wordpiece')):
    if os.path.exists(os.path.join(workdir, name)):
      return name, kind
  return '', ''


def load(workdir: str, mesh_fn=partitioning.make_mesh):
  """(retrieval_run.json, model config, Predictor, params, step) of a run folder."""
  path = os.path.join(workdir, run_folder.SERVING_RUN)
  if not (all(os.path.exists(os.path.join(workdir, name))
              for name in (run_folder.SERVING_RUN, run_folder.DOC_IDS)) and tokenizer_file(workdir)[0]):
    raise ValueError(f'{workdir} lacks {run_folder.SERVING_RUN}, {run_folder.DOC_IDS} or '
                     f'{run_folder.SPM_MODEL} ({run_folder.WORDPIECE} for runs of the pretrained '
                     'encoder): --workdir must be the folder of one trained method '
                     '(dsi_atomic, dsi_naive, dsi_semantic or seal) of the retrieval run mode, '
                     'e.g. runs/retrieval/dsi_semantic; a folder from before these files '
                     'were saved gets them when the retrieval run mode runs again (it '
                     'evaluates the final checkpoint without training).')
  with open(path) as f:
    run = json.load(f)
  config = models.config_from_json(run['model_config'], run.get('model_class', 'TransformerConfig'))
  pred = predictor.Predictor(config, mesh_fn())
  params, step = pred.restore_params(os.path.join(workdir, 'checkpoints'))
  return run, config, pred, params, step


def export(workdir: str, output_dir: str | None = None, k: int | None = None,
           platforms: tuple[str, ...] = export_lib.PLATFORMS, saved_model: bool = True) -> str:
  """Writes the serving directory of a DSI or SEAL run folder (module docstring).

  Args:
    workdir: one method's folder of the retrieval run mode.
    output_dir: where (default <workdir>/serving); an export of another step
      there is replaced only with REPLACE (export_lib.write.replace).
    k: documents per query; DSI: default and at most the run's beam size;
      SEAL: default 100 (the depth of the run's evaluation).
    platforms: lowering platforms (default CPU, CUDA and TPU).
    saved_model: also write the TensorFlow SavedModel (DSI only).

  Returns:
    The serving directory.
  """
  run, config, pred, params, step = load(workdir)
  if run.get('title_len'):
    raise ValueError(f'{workdir} is a DSI run with title identifiers (dsi.DsiTasks.'
                     'title_len); its served form (two searches and their fusion) is not '
                     'exported yet: export a run without title_len.')
  width, num_docs = run['input_len'], run['num_docs']
  tokenizer, kind = tokenizer_file(workdir)
  with open(os.path.join(workdir, tokenizer), 'rb') as f:
    files = {tokenizer: f.read()}
  row = {}
  if os.path.exists(os.path.join(workdir, 'row.json')):  # the run mode's evaluation
    with open(os.path.join(workdir, 'row.json')) as f:
      row = json.load(f)
  query = export_lib.Tensor('query', 'int32', ('batch', width))
  manifest = {
      'format': 'genrec-stablehlo-1', 'kind': 'retriever',
      'inputs': {'query': f'int32 [batch, {width}]: the query\'s {kind} ids ({tokenizer}'
                 f'{", no [CLS]/[SEP]: the model adds them" if kind == "wordpiece" else ""}), '
                 f'0-padded at the end (longer: keep the first {width})'},
      'beam_size': run['beam_size'], 'input_len': width, 'num_items': num_docs,
      'method': run['method'], 'collection': run['collection'],
      'model_config': run['model_config'], 'checkpoint_step': step,
      'metrics_at_step': {m: v for m, v in row.items() if '@' in m}, 'tokenizer': tokenizer,
      'tokenizer_kind': kind}
  write = functools.partial(export_lib.write, output_dir or os.path.join(workdir, 'serving'),
                            version=step, platforms=platforms,
                            item_keys=os.path.join(workdir, run_folder.DOC_IDS))
  if run['method'] not in _EXPORTERS:
    raise ValueError(f"{workdir} holds a {run['method']!r} run; export knows "
                     f'{sorted(_EXPORTERS)}.')
  out = _EXPORTERS[run['method']](_Job(workdir, run, config, pred, params, k, query, manifest,
                                       files, write, saved_model))
  logging.info('export: the %s retriever of %s (step %d) -> %s', run['method'], workdir, step,
               out)
  return out


@dataclasses.dataclass(frozen=True)
class _Job:
  """What a method's exporter reads: the run folder, its record
  (retrieval_run.json), model and parameters, the export's settings, the
  manifest and files common to every method, and the serving directory's
  writer (`export_lib.write` with the directory, step and platforms)."""
  workdir: str
  run: dict
  config: models.ModelConfig
  pred: predictor.Predictor
  params: dict
  k: int | None
  query: export_lib.Tensor
  manifest: dict
  files: dict[str, bytes]
  write: Callable
  saved_model: bool


def _export_dsi(job: _Job) -> str:
  run, pred, k, workdir = job.run, job.pred, job.k, job.workdir
  beam, width = run['beam_size'], run['input_len']
  k = beam if k is None else k
  if not 1 <= k <= beam:
    raise ValueError(f'k must be in 1..{beam} (the run\'s beam size), not {k}.')
  ids = ItemIds.load(os.path.join(workdir, 'ids'))
  trie = constraints.PrefixTrie.from_codes(ids.codes[1:], ids.level_sizes,
                                           ids.level_offsets + run['docid_token_shift'])
  arrays = {'params': jax.device_get(job.params), 'trie': jax.device_get(trie),
            'leaf_item': constraints.leaf_items(ids)}

  def function(top_k):
    def fn(arrays, query):
      model = nnx.merge(pred.graphdef, arrays['params'])
      return predictor.decode_items(model, query, arrays['trie'], arrays['leaf_item'], beam, k,
                                    True, top_k)
    return fn

  warmup = tuple((np.arange(b * width, dtype=np.int32).reshape(b, width) % 50 + 3,)
                 for b in (1, 8))
  return job.write(
      function(jax.lax.top_k), arrays, (job.query,),
      (export_lib.Tensor('documents', 'int32', ('batch', k)),
       export_lib.Tensor('scores', 'float32', ('batch', k))), {
          **job.manifest,
          'outputs': {'documents': f'int32 [batch, {k}]: document numbers '
                      f'1..{run["num_docs"]} (items.tsv), best first (0: none)',
                      'scores': f'float32 [batch, {k}]: beam log-probabilities'},
          'k': k, 'id_scheme': ids.scheme, 'id_levels': list(ids.level_sizes)},
      saved_model_fn=function(decoding.sort_top_k),
      signatures=(export_lib.SIGNATURE, 'retrieve') if job.saved_model else (), warmup=warmup,
      files=job.files)


def _stack(kv: list) -> jax.Array:
  """Per layer (keys, values) [n, T, h, dk] -> one array [n, layers, 2, T, h, dk]."""
  return jnp.stack([jnp.stack(pair, 1) for pair in kv], 1)


def _unstack(x: jax.Array) -> list:
  return [(x[:, i, 0], x[:, i, 1]) for i in range(x.shape[1])]


def _context_arrays(context) -> tuple[jax.Array, ...]:
  """A model's `decoding_context` as state tensors: the stacked cross-attention
  keys/values, and the pooled query embedding where the model has one."""
  if isinstance(context, tuple):  # models.BertEncoderDecoder: (cross, pooled)
    return _stack(context[0]), context[1]
  return (_stack(context),)


def _context(arrays: tuple[jax.Array, ...]):
  return (_unstack(arrays[0]), arrays[1]) if len(arrays) == 2 else _unstack(arrays[0])


def _export_seal(job: _Job) -> str:
  # (job.saved_model: the host-side FM-index loop has no SavedModel form.)
  run, pred, k, files = job.run, job.pred, job.k, dict(job.files)
  beam, width, steps = run['beam_size'], run['input_len'], run['ngram_len']
  k = min(100, run['num_docs']) if k is None else k
  if not 1 <= k <= run['num_docs']:
    raise ValueError(f'k must be in 1..{run["num_docs"]} (the documents), not {k}.')

  def start(arrays, query):
    model = nnx.merge(pred.graphdef, arrays['params'])
    beams, context, valid = predictor.host_decode_start(model, query, beam, steps)
    cache = _stack(beams.cache)
    return (beams.sequences, beams.scores, beams.token_log_probs,
            cache.reshape(query.shape[0], beam, *cache.shape[1:]), *_context_arrays(context),
            valid)

  def step(arrays, sequences, scores, token_log_probs, cache, *context_valid_allowed_t):
    *context, valid, allowed, t = context_valid_allowed_t
    model = nnx.merge(pred.graphdef, arrays['params'])
    cache = _unstack(cache.reshape(-1, *cache.shape[2:]))
    beams = predictor.host_decode_step(
        model, decoding.Beams(sequences, scores, token_log_probs, cache), _context(context),
        valid, allowed, t)
    cache = _stack(beams.cache)
    return (beams.sequences, beams.scores, beams.token_log_probs,
            cache.reshape(sequences.shape[0], beam, *cache.shape[1:]))

  arrays = {'params': jax.device_get(job.params)}
  shapes = jax.eval_shape(start, arrays, jax.ShapeDtypeStruct((1, width), np.int32))
  names = ('sequences', 'scores', 'token_log_probs', 'cache', 'cross',
           *(('pooled',) if len(shapes) == 7 else ()), 'valid')
  state = tuple(export_lib.Tensor(name, str(x.dtype), ('batch', *x.shape[1:]))
                for name, x in zip(names, shapes))
  allowed = export_lib.Tensor('allowed', 'bool', ('batch', beam, job.config.vocab_size))
  index_dir = os.path.join(job.workdir, run_folder.FM_INDEX)
  for name in sorted(os.listdir(index_dir)):
    with open(os.path.join(index_dir, name), 'rb') as f:
      files[f'{run_folder.FM_INDEX}/{name}'] = f.read()
  return job.write(
      start, arrays, (job.query,), state, {
          **job.manifest,
          'outputs': {'state': 'the decoding state that step takes (genrec.seal.'
                      'SealRetriever runs the loop and scores the documents)'},
          'decoding': f'{steps} steps of beam search over n-grams of the corpus: the allowed '
                      'tokens of each beam come from the FM-index on the host '
                      f'({run_folder.FM_INDEX}/) between device steps',
          'k': k, 'ngram_len': steps, 'vocab_size': job.config.vocab_size,
          'scorer': run['scorer'], 'fm_index': run_folder.FM_INDEX},
      signatures=(), files=files,
      functions={'step': (step, (*state, allowed, export_lib.Tensor('step', 'int32', ())),
                          state[:4])})


# Each method's exporter: DSI's docid-trie beam search is one device function,
# SEAL's FM-index loop two (a start and a step) run from the host.
_EXPORTERS = {'dsi_atomic': _export_dsi, 'dsi_naive': _export_dsi, 'dsi_semantic': _export_dsi,
              'seal': _export_seal}
