"""A serving directory written by `genrec.export_lib` (any application's
export run mode), loaded with jax and numpy alone (no flax, optax, orbax,
seqio or TensorFlow): what a server imports."""

import json
import os

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

MANIFEST = 'manifest.json'
ARTIFACT = 'model.stablehlo'
ARRAYS = 'arrays.npz'


class Function:
  """One exported function of a serving directory: `f(*inputs)` checks the
  inputs against its signature (symbolic dimensions: any size, the same
  wherever the same name appears) and returns the outputs."""

  def __init__(self, exported, signature: dict, arrays: list, name: str):
    self.exported, self.arrays, self.name = exported, arrays, name
    self.inputs, self.outputs = signature['inputs'], signature['outputs']

  def __call__(self, *inputs, to_numpy: bool = True) -> tuple:
    """The outputs as numpy arrays, or (to_numpy=False) as device arrays that
    can go back in as inputs without a copy (a decoding loop's state)."""
    if len(inputs) != len(self.inputs):
      raise ValueError(f'{self.name}: {len(self.inputs)} inputs expected '
                       f'({", ".join(t["name"] for t in self.inputs)}), got {len(inputs)}.')
    arrays, sizes = [], {}
    for spec, x in zip(self.inputs, inputs):
      if not isinstance(x, jax.Array) or x.dtype != spec['dtype']:
        x = np.asarray(x, spec['dtype'])
      want = spec['shape']
      ok = x.ndim == len(want) and all(
          (d == n) if isinstance(d, int) else sizes.setdefault(d, n) == n
          for d, n in zip(want, x.shape))
      if not ok:
        shape = ', '.join(str(d) for d in want)
        raise ValueError(f'{spec["name"]} must be {spec["dtype"]} [{shape}], not '
                         f'{list(x.shape)}.')
      arrays.append(x)
    outputs = self.exported.call(self.arrays, *arrays)
    return tuple(np.asarray(y) for y in outputs) if to_numpy else tuple(outputs)


class Artifact:
  """`Artifact(directory)(*inputs)` -> the outputs (numpy), as the manifest's
  `signature` names them: a recommender's history -> (items, scores), a
  ranker's (history, candidates) -> (scores,). Further functions of the
  directory (manifest `functions`): `function(name)`."""

  def __init__(self, directory: str):
    self.directory = directory
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path) as f:
        self.manifest = json.load(f)
      with np.load(os.path.join(directory, self.manifest['arrays'])) as z:
        self.arrays = [jnp.asarray(z[f'arr_{i}']) for i in range(self.manifest['num_arrays'])]
      self.main = self._load('model', self.manifest['artifact'], self.manifest['signature'])
      self.functions = {name: self._load(name, f['artifact'], f['signature'])
                        for name, f in (self.manifest.get('functions') or {}).items()}
    except (OSError, KeyError, ValueError, TypeError) as e:
      raise ValueError(f'{directory} is not a readable genrec serving directory ({e}); '
                       'write one with python main.py --gin_file=gin/runs/export.gin '
                       '(or export_ranker.gin) --workdir=<training run>.') from None
    self.inputs, self.outputs = self.main.inputs, self.main.outputs
    self.kind = self.manifest.get('kind', 'recommender')
    self.max_history = self.manifest.get('max_history')
    self.k = self.manifest.get('k')

  def _load(self, name: str, file: str, signature: dict) -> Function:
    with open(os.path.join(self.directory, file), 'rb') as f:
      return Function(jax_export.deserialize(bytearray(f.read())), signature, self.arrays, name)

  def function(self, name: str) -> Function:
    if name not in self.functions:
      raise ValueError(f'{self.directory} has no function {name!r} (has '
                       f'{sorted(self.functions)}).')
    return self.functions[name]

  def expect(self, kind: str) -> 'Artifact':
    """Self, if the artifact is a `kind` (else a ValueError naming both)."""
    if self.kind != kind:
      raise ValueError(f'{self.directory} holds a {self.kind}, not a {kind}.')
    return self

  def external_ids(self) -> list[str] | None:
    """Per item id (index 0 ''), its external id from the artifact's item map
    (items.tsv: "item_id<TAB>external_id" after a header); None without one."""
    name = self.manifest.get('item_map')
    if not name or not os.path.exists(os.path.join(self.directory, name)):
      return None
    with open(os.path.join(self.directory, name)) as f:
      next(f)
      return [''] + [line.rstrip('\n').split('\t')[1] for line in f if line.strip()]

  def __call__(self, *inputs) -> tuple[np.ndarray, ...]:
    """The main function's outputs (numpy) for its inputs (see `Function`)."""
    return self.main(*inputs)
