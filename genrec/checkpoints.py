"""The one orbax CheckpointManager: train state + data-iterator state.

Keeps the latest `keep` checkpoints and, beside them, the best one by a
validation metric; saves are synchronous on the host thread only as long as
it takes to copy arrays off the device (orbax writes asynchronously).
"""

import os
from typing import Any

from absl import logging
import orbax.checkpoint as ocp

_pp = ocp.checkpoint_managers.preservation_policy


def make_manager(directory: str, keep: int = 3,
                 best_metric: str | None = 'validation/ndcg@10') -> ocp.CheckpointManager:
  """A manager whose checkpoints hold items 'state' (pytree) and 'data' (json).

  Args:
    directory: where step folders go.
    keep: how many of the latest checkpoints to keep.
    best_metric: metrics key (higher is better) of the checkpoint also kept as
      `best_step()`; None keeps only the latest.
  """
  policies = [_pp.LatestN(n=keep)]
  best_fn = None
  if best_metric is not None:
    best_fn = lambda metrics: metrics[best_metric]
    policies.append(_pp.BestN(get_metric_fn=best_fn, reverse=False, n=1,
                              keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode='max',
      preservation_policy=_pp.AnyPreservationPolicy(policies),
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict,
         metrics: dict[str, float] | None = None) -> None:
  if step in manager.all_steps():
    return
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)),
               metrics=metrics)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any
            ) -> tuple[Any, dict]:
  """Restores (state with the shardings of `abstract_state`, data state).

  Raises:
    ValueError: naming the checkpoint folder when it cannot be read.
  """
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for corrupt or foreign folders
    path = os.path.join(str(manager.directory), str(step))
    raise ValueError(
        f'Cannot restore checkpoint {path}: {type(e).__name__}: {str(e)[:500]}. If it was '
        'written by a different model or config, use a new --workdir; if it is corrupt, '
        'move that step folder away to resume from an earlier one.') from e
  logging.info('Restored checkpoint at step %d from %s', step, manager.directory)
  return out.state, out.data
