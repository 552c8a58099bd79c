"""A serving directory written by `genrec.recommendation.export`, loaded with
jax and numpy alone (no flax, optax, orbax, seqio or TensorFlow): what a
server imports."""

import json
import os

from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

MANIFEST = 'manifest.json'


class Artifact:
  """`Artifact(directory)(history)` -> (items int32 [b, k], scores float32 [b, k])."""

  def __init__(self, directory: str):
    self.directory = directory
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path) as f:
        self.manifest = json.load(f)
      with open(os.path.join(directory, self.manifest['artifact']), 'rb') as f:
        self.exported = jax_export.deserialize(bytearray(f.read()))
      with np.load(os.path.join(directory, self.manifest['arrays'])) as z:
        self.arrays = [jnp.asarray(z[f'arr_{i}']) for i in range(self.manifest['num_arrays'])]
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f'{directory} is not a readable genrec serving directory ({e}); '
                       'write one with python main.py --gin_file=gin/runs/export.gin '
                       '--workdir=<training run>.') from None
    self.max_history = self.manifest['max_history']
    self.k = self.manifest['k']

  def external_ids(self) -> list[str] | None:
    """Per item id (index 0 ''), its external id from the artifact's item map
    (items.tsv: "item_id<TAB>external_id" after a header); None without one."""
    name = self.manifest.get('item_map')
    if not name or not os.path.exists(os.path.join(self.directory, name)):
      return None
    with open(os.path.join(self.directory, name)) as f:
      next(f)
      return [''] + [line.rstrip('\n').split('\t')[1] for line in f if line.strip()]

  def __call__(self, history) -> tuple[np.ndarray, np.ndarray]:
    """history: int32 [batch, max_history] item ids, oldest first, 0-padded at the end."""
    history = np.asarray(history, np.int32)
    if history.ndim != 2 or history.shape[1] != self.max_history:
      raise ValueError(f'history must be int32 [batch, {self.max_history}], not '
                       f'{list(history.shape)}.')
    items, scores = self.exported.call(self.arrays, history)
    return np.asarray(items), np.asarray(scores)
