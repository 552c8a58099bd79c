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
    # A ranking model's hashed embedding table: rows split over every device
    # that does not split the batch, so a 10M-row table is never replicated
    # under FSDP or tensor parallelism (XLA gathers rows without all-gathering
    # the table).
    ('table_rows', ('fsdp', 'model')),
    ('kv', None),
    ('length', None),
    ('relpos_buckets', None),
)


# Named sharding strategies: (data, fsdp, model) mesh sizes, -1 takes the
# devices left (`make_mesh(strategy=...)`, gin/sharding/<name>.gin).
STRATEGIES = {
    'data': (-1, 1, 1),  # replicate the parameters, split the batch
    'fsdp': (1, -1, 1),  # split parameters + optimizer state on `embed`, and the batch
    'tensor': (1, 1, -1),  # split heads / mlp / vocab / table rows; batch replicated
    'fsdp_tensor': (1, -1, 2),  # tensor parallel over pairs, FSDP over the pairs
}


def mesh_sizes(data: int = -1, fsdp: int = 1, model: int = 1, num_devices: int = 1,
               strategy: str | None = None) -> tuple[int, int, int]:
  """The (data, fsdp, model) sizes for `num_devices` devices (see make_mesh)."""
  if strategy is not None:
    if strategy not in STRATEGIES:
      raise ValueError(f'Unknown sharding strategy {strategy!r}; use one of '
                       f'{sorted(STRATEGIES)} or set the data/fsdp/model sizes.')
    data, fsdp, model = STRATEGIES[strategy]
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(
        f'Mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: '
        'the product of the sizes must divide the device count (use -1 for one axis '
        'to take the rest).')
  return tuple(num_devices // known if s == -1 else s for s in sizes)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
    strategy: str | None = None,
) -> Mesh:
  """Builds the (data, fsdp, model) mesh; one size may be -1 to take the rest.

  Args:
    data: data-parallel size, -1 to fill.
    fsdp: fully-sharded data-parallel size (parameters sharded on `embed`).
    model: tensor-parallel size (heads, mlp and vocab sharded).
    devices: the devices to use; all of them by default.
    strategy: a name of `STRATEGIES`; when given, its sizes replace
      data/fsdp/model.

  Returns:
    A mesh with explicit axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(data, fsdp, model, len(devices), strategy)
  return jax.make_mesh(
      sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
      devices=devices[:math.prod(sizes)])


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


def check_divisible(abstract, shardings) -> None:
  """Raises a clear error when a mesh does not divide an array it shards.

  Args:
    abstract: a pytree of arrays or ShapeDtypeStructs (e.g. the parameters).
    shardings: the matching pytree of NamedShardings.
  """
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  for (path, a), s in zip(flat, jax.tree.leaves(shardings)):
    for dim, (size, axes) in enumerate(zip(a.shape, tuple(s.spec) + (None,) * a.ndim)):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(s.mesh.shape[x] for x in axes)
      if size % ways:
        name = '/'.join(str(getattr(k, 'key', k)) for k in path)
        raise ValueError(
            f'{name} {list(a.shape)}: dimension {dim} ({size}) is split {ways} ways '
            f'(mesh axes {"x".join(axes)} of {dict(s.mesh.shape)}) and {ways} does not '
            f'divide {size}. Pick mesh sizes that divide it '
            '(partitioning.make_mesh.data/fsdp/model) or a size that they divide.')


def per_device_bytes(abstract, shardings) -> int:
  """Bytes of `abstract` (arrays or ShapeDtypeStructs) held by one device."""
  return sum(math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
             for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def device_summary() -> str:
  """'<count> x <device kind>' of the devices a run uses, for results tables."""
  return f'{jax.device_count()} x {jax.devices()[0].device_kind}'


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch-major array: batch split over the data axes."""
  return NamedSharding(mesh, logical_to_mesh_spec(('batch',) + (None,) * (ndim - 1)))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of several steps' batches stacked [steps, batch, ...]: the
  batch dimension split over the data axes, the steps on every device."""
  return NamedSharding(mesh, logical_to_mesh_spec((None, 'batch')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  spec = logical_to_mesh_spec(('batch',))[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[a] for a in axes)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False
                ) -> dict[str, jax.Array]:
  """Turns this process's slice of a global batch into global jax Arrays
  (`stacked`: several steps' batches [steps, batch, ...])."""
  return {
      k: jax.make_array_from_process_local_data(
          stacked_batch_sharding(mesh) if stacked else batch_sharding(mesh, v.ndim), v)
      for k, v in batch.items()
  }


def host_slice(global_batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process feeds: those its devices
  hold under `batch_sharding(mesh)`. Processes split the batch when they
  hold different data-parallel shards; processes that differ only along the
  `model` axis (tensor parallelism across hosts) feed the same rows.

  Raises:
    ValueError: when the batch does not divide over the data-parallel
      devices, or this process's rows are not contiguous.
  """
  if global_batch_size % data_parallel_size(mesh):
    raise ValueError(f'Batch size {global_batch_size} is not divisible by the '
                     f'data-parallel size {data_parallel_size(mesh)} of mesh '
                     f'{dict(mesh.shape)}.')
  index = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch_size,))
  rows = sorted({s[0].indices(global_batch_size)[:2] for s in index.values()})
  if any(stop != start for (_, stop), (start, _) in zip(rows, rows[1:])):
    raise ValueError(f'Process {jax.process_index()} holds batch rows {rows} of mesh '
                     f'{dict(mesh.shape)}, not one contiguous block: order the mesh\'s '
                     'devices by process.')
  start, stop = rows[0][0], rows[-1][1]
  return slice(start, stop)


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
    out.append(fn(shard_batch({k: v[host_slice(batch_size, mesh)] for k, v in chunk.items()},
                              mesh),
                  rows))
  return out


def gather(x: jax.Array, rows: int | None = None) -> np.ndarray:
  """A batch-sharded global array on every host as numpy (first `rows` rows)."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:rows]
