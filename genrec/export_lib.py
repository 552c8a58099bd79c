"""Serving directories: a jitted function of (arrays, inputs) as StableHLO and
as a TensorFlow SavedModel, with its arrays and a manifest.

Every application's exporter (`genrec.recommendation.export`,
`genrec.ranking.export`) builds a pure function `fn(arrays, *inputs)` whose
inputs have a symbolic batch dimension (and other named symbolic dimensions
where they vary, e.g. the number of candidates), and calls `write` here:

  model.stablehlo  `jax.export` of fn (StableHLO; lowered for CPU, CUDA and TPU
                   unless asked otherwise), arguments (arrays, *inputs).
  <name>.stablehlo further functions of the same arrays, if any (manifest
                   `functions`: their files and signatures).
  arrays.npz       the arrays (arr_0, ... in flattening order).
  manifest.json    the application's description plus `signature` (input and
                   output names, dtypes and shapes, with the symbolic names).
  saved_model/<version>/
                   the same function as a TensorFlow SavedModel (jax2tf),
                   the arrays as variables, the named signatures, and a TF
                   Serving warm-up request file in assets.extra/; <version>
                   (the checkpoint step) is the version folder TF Serving
                   expects: --model_base_path=<dir>/saved_model.

`genrec.artifact.Artifact` loads a directory with jax and numpy alone.
"""

import dataclasses
import json
import os
import shutil
import time
from importlib import metadata

from absl import logging
import jax
from jax import export as jax_export
import numpy as np

from genrec import loop
from genrec.artifact import ARRAYS, ARTIFACT, MANIFEST

# Lowered for all three by default: lowering needs no device of the kind.
PLATFORMS = ('cpu', 'cuda', 'tpu')
SAVED_MODEL = 'saved_model'
ITEMS = 'items.tsv'
SIGNATURE = 'serving_default'
WARMUP = os.path.join('assets.extra', 'tf_serving_warmup_requests')


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One input or output: shape entries are ints or symbolic names ('batch')."""
  name: str
  dtype: str
  shape: tuple[int | str, ...]

  def spec(self, symbols: dict) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(symbols.get(d, d) for d in self.shape), self.dtype)

  def describe(self) -> dict:
    return {'name': self.name, 'dtype': self.dtype, 'shape': list(self.shape)}


def _symbols(inputs: tuple[Tensor, ...]) -> dict:
  names = list(dict.fromkeys(d for t in inputs for d in t.shape if isinstance(d, str)))
  return dict(zip(names, jax_export.symbolic_shape(', '.join(names)))) if names else {}


def _polymorphic_shape(t: Tensor) -> str:
  return '(' + ', '.join(str(d) for d in t.shape) + ')'


def write(out: str, fn, arrays, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...],
          manifest: dict, *, version: int, platforms: tuple[str, ...] = PLATFORMS,
          saved_model_fn=None, signatures: tuple[str, ...] = (SIGNATURE,),
          warmup: tuple[tuple[np.ndarray, ...], ...] = (), files: dict | None = None,
          item_keys: str | None = None,
          functions: dict[str, tuple] | None = None, replace: bool = False) -> str:
  """Writes a serving directory (see the module docstring) at `out`, replacing
  it at the end (a failed export leaves the old one). An existing serving
  directory of another checkpoint step (or of another kind of model) is
  replaced only with `replace`; a folder that is not a serving directory
  never is. Two exports into one directory at once: the second is refused
  (`loop.RunLock` on `<out>.lock`).

  Args:
    fn: (arrays, *inputs) -> tuple of outputs, pure and jittable.
    arrays: a pytree of arrays (parameters, tables).
    inputs, outputs: the signature.
    manifest: the application's fields (kind, model, checkpoint, metrics).
    version: the SavedModel version folder (the checkpoint step).
    platforms: lowering platforms.
    saved_model_fn: the function for the SavedModel (default fn); e.g. one
      built with `decoding.sort_top_k`, which TF's older StableHLO reads. None
      and `signatures=()`: no SavedModel.
    signatures: the SavedModel's signature names (the first is the warm-up's).
    warmup: example inputs for TF Serving's warm-up file.
    files: {name: text or bytes} written into the directory (e.g. a
      tokenizer model); a name may have folders ('fm_index/text.npy').
    item_keys: a file with the external id of item i on line i
      (`sequences.write_external_ids`); when it exists, items.tsv (the item
      map `Artifact.external_ids` reads) is written from it.
    functions: more functions of the same arrays, {name: (fn, inputs,
      outputs)}, each as StableHLO in <name>.stablehlo (not in the
      SavedModel), e.g. the decoding step a host loop calls
      (`Artifact.function`).
    replace: replace a serving directory of another step or model.

  Returns:
    `out`.
  """
  with loop.RunLock(out.rstrip('/') + '.lock', what='export directory (EXPORT_DIR)'):
    check_replaceable(out, manifest, replace)
    return _write(out, fn, arrays, inputs, outputs, manifest, version=version,
                  platforms=platforms, saved_model_fn=saved_model_fn, signatures=signatures,
                  warmup=warmup, files=files, item_keys=item_keys, functions=functions)


def check_replaceable(out: str, manifest: dict, replace: bool = False) -> None:
  """Refuses to replace `out` unless it is absent or empty, or a serving
  directory of the same kind and checkpoint step as `manifest` (or `replace`
  and a serving directory)."""
  if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
    return
  try:
    with open(os.path.join(out, MANIFEST)) as f:
      old = json.load(f)
  except (OSError, ValueError):
    raise ValueError(f'{out} exists and is not a genrec serving directory (no readable '
                     f'{MANIFEST}); export never replaces it. Choose another EXPORT_DIR or '
                     'move that folder away.') from None
  same = all(old.get(k) == manifest.get(k) for k in ('kind', 'checkpoint_step'))
  if not same and not replace:
    raise ValueError(
        f'{out} holds the export of {old.get("kind")} step {old.get("checkpoint_step")} '
        f'(exported {old.get("exported_at")}); this export is of {manifest.get("kind")} step '
        f'{manifest.get("checkpoint_step")}. Export to another directory (EXPORT_DIR=...), '
        'or pass REPLACE=True (export_lib.write.replace = True) to replace it.')


def _write(out: str, fn, arrays, inputs, outputs, manifest: dict, *, version, platforms,
           saved_model_fn, signatures, warmup, files, item_keys, functions) -> str:
  leaves, treedef = jax.tree.flatten(arrays)
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]

  def flat(f):
    return lambda leaves, *xs: tuple(f(jax.tree.unflatten(treedef, leaves), *xs))

  def serialized(f, inputs):
    symbols = _symbols(inputs)
    t0 = time.time()
    exported = jax_export.export(jax.jit(flat(f)), platforms=platforms)(
        specs, *(t.spec(symbols) for t in inputs))
    logging.info('Exported StableHLO for %s in %.1fs', platforms, time.time() - t0)
    return exported.serialize()

  tmp = out.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, ARTIFACT), 'wb') as f:
    f.write(serialized(fn, inputs))
  more = {}
  for name, (f, f_inputs, f_outputs) in (functions or {}).items():
    more[name] = {'artifact': f'{name}.stablehlo', 'signature': _signature(f_inputs, f_outputs)}
    with open(os.path.join(tmp, more[name]['artifact']), 'wb') as file:
      file.write(serialized(f, f_inputs))
  np.savez(os.path.join(tmp, ARRAYS), *[np.asarray(x) for x in leaves])
  files = dict(files or {})
  if item_keys and os.path.exists(item_keys):
    with open(item_keys) as f:
      files[ITEMS] = 'item_id\texternal_id\n' + ''.join(
          f'{i}\t{key}\n' for i, key in enumerate(f.read().splitlines(), 1))
  for name, content in files.items():
    os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
    with open(os.path.join(tmp, name), 'wb' if isinstance(content, bytes) else 'w') as f:
      f.write(content)
  saved = None
  if signatures:
    t0 = time.time()
    write_saved_model(os.path.join(tmp, SAVED_MODEL, str(version)), flat(saved_model_fn or fn),
                      leaves, inputs, outputs, platforms, signatures, warmup)
    logging.info('Wrote the SavedModel in %.1fs', time.time() - t0)
    saved = {'base_path': SAVED_MODEL, 'version': version, 'signatures': list(signatures),
             'warmup': WARMUP if warmup else None}
  loop.write_json(os.path.join(tmp, MANIFEST), {
      **manifest, 'artifact': ARTIFACT, 'arrays': ARRAYS, 'num_arrays': len(leaves),
      'platforms': list(platforms), 'item_map': ITEMS if ITEMS in files else None,
      'signature': _signature(inputs, outputs), 'functions': more,
      'saved_model': saved,
      'versions': {p: version_of(p) for p in ('genrec', 'jax', 'jaxlib', 'flax')},
      'exported_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out


def _signature(inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> dict:
  return {'inputs': [t.describe() for t in inputs], 'outputs': [t.describe() for t in outputs]}


def write_saved_model(path: str, fn, leaves, inputs: tuple[Tensor, ...],
                      outputs: tuple[Tensor, ...], platforms: tuple[str, ...],
                      signatures: tuple[str, ...], warmup=()) -> None:
  """`fn(leaves, *inputs)` as a TensorFlow SavedModel at `path` (see `write`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (export only)
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import (  # pylint: disable=g-import-not-at-top
      model_pb2, predict_pb2, prediction_log_pb2)

  tf_fn = jax2tf.convert(fn, polymorphic_shapes=[None] + [_polymorphic_shape(t) for t in inputs],
                         with_gradient=False, native_serialization_platforms=platforms)
  module = tf.Module()
  module.arrays = [tf.Variable(np.asarray(x), trainable=False, name=f'arr_{i}')
                   for i, x in enumerate(leaves)]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([d if isinstance(d, int) else None for d in t.shape], t.dtype, name=t.name)
      for t in inputs])
  def serve(*xs):
    return {t.name: y for t, y in zip(outputs, tf_fn(module.arrays, *xs))}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={name: serve for name in signatures})
  if not warmup:
    return
  os.makedirs(os.path.join(path, os.path.dirname(WARMUP)))
  with tf.io.TFRecordWriter(os.path.join(path, WARMUP)) as writer:
    for example in warmup:
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name='genrec', signature_name=signatures[0]))
      for t, x in zip(inputs, example):
        request.inputs[t.name].CopyFrom(tf.make_tensor_proto(np.asarray(x, t.dtype)))
      writer.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def version_of(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None
