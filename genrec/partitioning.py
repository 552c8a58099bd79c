"""Device mesh and the logical-axis rules: the only module that names mesh axes.

Layers annotate every parameter with *logical* axis names (`batch`, `embed`,
`mlp`, `heads`, `kv`, `vocab`, ...). This module maps those names onto the
physical mesh axes `data`, `fsdp` and `model` through one rules table, as t5x
and MaxText do, so that a new sharding strategy is a change of this table (or
of the mesh shape), never of the model code.
"""

from collections.abc import Callable, Sequence
import math
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from flax import nnx
import numpy as np

MESH_AXES = ('data', 'fsdp', 'model')

# Logical axis -> mesh axis (or axes, or None = replicated). The first rule
# that names a logical axis wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('vocab', 'model'),
    ('items', 'model'),
    ('kv', None),
    ('length', None),
    ('relpos_buckets', None),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds the (data, fsdp, model) mesh; one size may be -1 to take the rest.

  Args:
    data: data-parallel size, -1 to fill.
    fsdp: fully-sharded data-parallel size (parameters sharded on `embed`).
    model: tensor-parallel size (heads, mlp and vocab sharded).
    devices: the devices to use; all of them by default.

  Returns:
    A mesh with explicit axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise ValueError(
        f'Mesh {dict(zip(MESH_AXES, sizes))} does not fit {len(devices)} devices: '
        'the product of the sizes must divide the device count (use -1 for one axis '
        'to take the rest).')
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    devices = devices[:math.prod(sizes)]
  return jax.make_mesh(
      tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
      devices=devices)


def logical_to_mesh_spec(
    logical: Sequence[str | None] | None,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> P:
  """Maps a tuple of logical axis names to a mesh PartitionSpec."""
  if logical is None:
    return P()
  table = {}
  for name, mesh_axis in rules:
    table.setdefault(name, mesh_axis)
  out, used = [], set()
  for name in logical:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f'Logical axis {name!r} has no rule; add it to LOGICAL_AXIS_RULES.')
    mesh_axis = table[name]
    # A mesh axis may shard only one dimension of an array.
    axes = (mesh_axis,) if isinstance(mesh_axis, str) else tuple(mesh_axis or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def param_partition_specs(abstract_params: nnx.State, rules=LOGICAL_AXIS_RULES) -> dict:
  """Mesh PartitionSpecs for an abstract parameter State, as a pure dict."""
  def spec(v):
    return logical_to_mesh_spec(v.get_metadata().get('out_sharding'), rules)
  specs = jax.tree.map(spec, abstract_params,
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs)


def named_shardings(specs, mesh: Mesh):
  """A pytree of PartitionSpecs as NamedShardings on `mesh`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def device_summary() -> str:
  """'<count> x <device kind>' of the devices a run uses, for results tables."""
  return f'{jax.device_count()} x {jax.devices()[0].device_kind}'


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch-major array: batch split over the data axes."""
  return NamedSharding(mesh, logical_to_mesh_spec(('batch',) + (None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  spec = logical_to_mesh_spec(('batch',))[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[a] for a in axes)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's slice of a global batch into global jax Arrays."""
  return {
      k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
      for k, v in batch.items()
  }


def host_slice(global_batch_size: int) -> slice:
  """The rows of a global batch that this process feeds."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f'Batch size {global_batch_size} is not divisible by the '
                     f'{n} processes.')
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def map_batches(arrays: dict[str, np.ndarray], batch_size: int, mesh: Mesh,
                fn: Callable[[dict[str, jax.Array], int], Any]) -> list:
  """Calls fn(sharded batch, rows) on consecutive global batches of `arrays`.

  The batch size is rounded to the data-parallel size; the last batch is
  zero-padded to full size and `rows` says how many of its rows are real.
  Every process passes the same global `arrays` and feeds its own slice.
  """
  dp = data_parallel_size(mesh) * jax.process_count()
  batch_size = max(dp, batch_size // dp * dp)
  n = len(next(iter(arrays.values())))
  out = []
  for start in range(0, n, batch_size):
    rows = min(batch_size, n - start)
    chunk = {k: np.pad(v[start:start + batch_size],
                       ((0, batch_size - rows),) + ((0, 0),) * (v.ndim - 1))
             for k, v in arrays.items()}
    out.append(fn(shard_batch({k: v[host_slice(batch_size)] for k, v in chunk.items()}, mesh),
                  rows))
  return out


def gather(x: jax.Array, rows: int | None = None) -> np.ndarray:
  """A batch-sharded global array on every host as numpy (first `rows` rows)."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:rows]
