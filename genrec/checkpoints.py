"""The one orbax CheckpointManager: train state + data-iterator state.

Keeps the latest `keep` checkpoints and, beside them, the best one by a
validation metric; saves are synchronous on the host thread only as long as
it takes to copy arrays off the device (orbax writes asynchronously).
"""

import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
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


def root_cause(e: BaseException) -> str:
  """The innermost exception of a chain, as 'Type: message' (first 600 chars)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  msg = ' '.join(str(e).split())
  return f'{type(e).__name__}: {msg[:600]}'


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any
            ) -> tuple[Any, dict]:
  """Restores (state with the shardings of `abstract_state`, data state).

  Raises:
    ValueError: one paragraph naming the checkpoint folder and the cause.
  """
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for corrupt or foreign folders
    path = os.path.join(str(manager.directory), str(step))
    raise ValueError(
        f'Cannot restore checkpoint {path} (step {step}): {root_cause(e)}. If it was written by '
        'a different model or config, use a new --workdir; if it is corrupt or incomplete, '
        'an earlier step can be used instead.') from None
  logging.info('Restored checkpoint at step %d from %s', step, manager.directory)
  return out.state, out.data


def restore_params(checkpoint_dir: str, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
  """The parameters of a genrec checkpoint (its optimizer and data state are
  not read): any run whose state is {'params': ..., ...}.

  Args:
    checkpoint_dir: a run's checkpoints/ folder (step folders inside).
    abstract_params: the parameters' ShapeDtypeStructs (with shardings).
    step: which step; default the latest.

  Returns:
    (params, the step).

  Raises:
    ValueError: naming the folder, when there is no checkpoint or it does
      not hold parameters of this model.
  """
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  steps = sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit()) if (
      os.path.isdir(checkpoint_dir)) else []
  if not steps:
    raise ValueError(f'No checkpoint in {checkpoint_dir}: train first (the run directory '
                     'given must be the --workdir of a training run).')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f'{checkpoint_dir} has no step {step}; it has {steps}.')
  path = os.path.join(checkpoint_dir, str(step), 'state')
  item = {'params': abstract_params}
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
  except Exception as e:  # orbax raises many types for corrupt or foreign folders
    raise ValueError(f'Cannot read the parameters of {path}: {root_cause(e)}. '
                     'The checkpoint must come from a run of this model config (same '
                     'sizes and identifiers).') from None
  logging.info('Restored the parameters of step %d from %s', step, checkpoint_dir)
  return out['params'], step


def open_and_restore(directory: str, abstract_state: Any, keep: int = 3,
                     best_metric: str | None = 'validation/ndcg@10', fallback: bool = True
                     ) -> tuple[ocp.CheckpointManager, int | None, Any, dict | None]:
  """Opens the manager of `directory` and restores its newest intact checkpoint.

  A checkpoint that cannot be read (truncated, corrupt, written by another
  model) is reported in one warning; with `fallback` its folder is moved aside
  to `<step>.unreadable-<time>` (nothing is deleted) and the next older step
  is tried. The manager is closed before any error is raised, so no orbax
  background traceback hides the cause.

  Returns:
    (the manager, the restored step or None for a fresh run, the state, the
    data-iterator state).

  Raises:
    ValueError: without `fallback`, for the newest checkpoint if unreadable;
      with it, when no checkpoint is readable.
  """
  manager = make_manager(directory, keep, best_metric)
  skipped = []
  while True:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      if skipped:
        manager.close()
        raise ValueError(f'No readable checkpoint in {directory}: ' + ' '.join(skipped) +
                         ' Start in a new --workdir (the unreadable folders were kept).')
      return manager, None, None, None
    try:
      state, data = restore(manager, steps[0], abstract_state)
      if skipped:
        logging.warning('Resuming from step %d, the newest readable checkpoint.', steps[0])
      return manager, steps[0], state, data
    except ValueError as e:
      manager.close()
      if not fallback:
        raise
      aside = os.path.join(directory, f'{steps[0]}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}')
      if jax.process_index() == 0:  # one process moves it; the others wait for that
        os.replace(os.path.join(directory, str(steps[0])), aside)
      multihost_utils.sync_global_devices(f'genrec: moved unreadable step {steps[0]}')
      logging.warning('%s Moved it to %s and trying the previous checkpoint.', e, aside)
      skipped.append(str(e))
      manager = make_manager(directory, keep, best_metric)
