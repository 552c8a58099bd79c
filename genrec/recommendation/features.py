"""Model features of a recommendation task with numpy alone.

The seqio Task in `tasks.py` is the reference pipeline. This module computes
the same arrays (asserted equal in tests/tasks_test.py) without TensorFlow,
for accelerator images that do not ship it: `load_arrays(pipeline=...)` (and
`train.train(input_pipeline=...)`) picks 'seqio' when seqio and TensorFlow
import, else 'numpy'. Each model class converts these into its module's
inputs (`models.Model.model_inputs`, `training_arrays`).
"""

import importlib.util

from absl import logging
import numpy as np

from genrec.data import sequences
from genrec.ids import ItemIds


def sequence_lengths(ids: ItemIds, max_history: int) -> dict[str, int]:
  return {'inputs': max_history * ids.num_levels, 'targets': ids.num_levels}


def _history_tokens(history: np.ndarray, token_table: np.ndarray, length: int) -> np.ndarray:
  """[n, H] item ids (0-padded at the end) -> [n, length] tokens, 0-padded at the end."""
  if np.any(token_table[0] != 0):
    raise ValueError('row 0 of the token table (padding) must be all zeros')
  n, h = history.shape
  tokens = token_table[history].reshape(n, -1).astype(np.int32)     # [n, H*L]
  if length >= tokens.shape[1]:
    return np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))
  return tokens[:, :length]


def train_arrays(split: sequences.Split, ids: ItemIds, lengths: dict[str, int]
                 ) -> dict[str, np.ndarray]:
  """What `tasks.load_train_arrays` yields (EncDecFeatureConverter, unpacked)."""
  table = ids.token_table()
  targets = table[split.target].astype(np.int32)                     # [n, L]
  targets = np.pad(targets, ((0, 0), (0, lengths['targets'] - targets.shape[1])))
  decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))         # shift right, 0 = BOS
  return {
      'encoder_input_tokens': _history_tokens(split.history, table, lengths['inputs']),
      'decoder_input_tokens': decoder_inputs,
      'decoder_target_tokens': targets,
      'decoder_loss_weights': (targets > 0).astype(np.int32),
  }


def eval_arrays(split: sequences.Split, ids: ItemIds, lengths: dict[str, int]
                ) -> dict[str, np.ndarray]:
  """What `tasks.load_eval_arrays` yields."""
  return {
      'encoder_input_tokens': _history_tokens(split.history, ids.token_table(),
                                              lengths['inputs']),
      'target_item': split.target.astype(np.int32),
  }


def pack_limited(lengths: np.ndarray, capacity: int, max_per_row: int, seed: int = 0
                 ) -> list[list[int]]:
  """Indices of `lengths` grouped into rows of at most `capacity` summed length
  and at most `max_per_row` members (each length in [1, capacity]).

  Two limits at once (an encoder-decoder row holds `max_per_row` decoder
  slots): first-fit decreasing fills rows with long members and leaves the
  many short ones for rows that run out of slots long before tokens. Here a
  row opens with the longest member left, and each further slot takes the
  longest member that still leaves every remaining slot room for the shortest
  one left, so rows fill both limits together (Amazon Beauty's TIGER-shaped
  prefixes: 96% of the tokens of a row used at 2.9 members a row, against 83%
  and 2.5 for first fit). Which members of equal length share a row is seeded.
  """
  lengths = np.asarray(lengths)
  if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
    raise ValueError(f'lengths must lie in [1, {capacity}], got {lengths.min()}..'
                     f'{lengths.max()}')
  if max_per_row < 1:
    raise ValueError(f'max_per_row must be >= 1, got {max_per_row}')
  rng = np.random.default_rng(seed)
  sizes = np.unique(lengths)[::-1]  # longest first
  queues = {int(s): list(rng.permutation(np.flatnonzero(lengths == s))) for s in sizes}
  left = {int(s): len(q) for s, q in queues.items()}
  live = [int(s) for s in sizes]  # sizes with members left, longest first
  rows = []
  while live:
    row, room = [], capacity
    while live and len(row) < max_per_row:
      reserve = (max_per_row - len(row) - 1) * live[-1]  # the shortest left, per slot after
      # The longest size that fits and leaves the reserve (if none does, the
      # longest that fits at all; a row's first member always fits).
      pick = next((s for s in live if s <= room - reserve), None)
      if pick is None:
        pick = next((s for s in live if s <= room), None)
      if pick is None:
        break
      row.append(int(queues[pick].pop()))
      room -= pick
      left[pick] -= 1
      if not left[pick]:
        live.remove(pick)
    rows.append(row)
  return rows


def pack_prefix_arrays(arrays: dict[str, np.ndarray], capacity: int | None = None,
                       max_per_row: int | None = None, seed: int = 0
                       ) -> tuple[dict[str, np.ndarray], dict]:
  """Packs encoder-decoder examples (`train_arrays`) several to a row, as T5X
  packs training examples.

  A row's encoder input holds its examples' histories left to right with
  'encoder_segment_ids' 1, 2, ... (0 on padding); its decoder arrays hold
  `max_per_row` slots of the identifier length, slot j the j-th example's
  targets with 'decoder_segment_ids' j (0 for an empty slot). The model
  attends within a segment only (encoder, decoder and cross attention), so a
  packed row computes what its examples would alone; relative position biases
  see the same distances. Most prefixes are far shorter than the longest
  history, so rows carry ~3x fewer encoder tokens than one example per row.

  Args:
    arrays: 'encoder_input_tokens' [n, s] (0-padded at the end),
      'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'
      [n, t].
    capacity: encoder tokens per row (default s).
    max_per_row: decoder slots per row (default: the number that costs the
      fewest row tokens, encoder plus decoder, over the whole set).
    seed: which examples of equal length share a row.

  Returns:
    (packed arrays, {'examples', 'rows', 'capacity', 'max_per_row',
    'token_fill'}).
  """
  enc = arrays['encoder_input_tokens']
  n, s = enc.shape
  t = arrays['decoder_target_tokens'].shape[1]
  capacity = capacity or s
  if capacity < s:
    raise ValueError(f'pack capacity {capacity} is shorter than the encoder input ({s} '
                     'tokens); use at least the input length.')
  lengths = np.maximum((enc > 0).sum(axis=1), 1)  # an empty history keeps one pad token
  if max_per_row is None:
    packs = {k: pack_limited(lengths, capacity, k, seed) for k in range(1, 9)}
    max_per_row = min(packs, key=lambda k: len(packs[k]) * (capacity + k * t))
    rows = packs[max_per_row]
  else:
    rows = pack_limited(lengths, capacity, max_per_row, seed)
  r = len(rows)
  out = {'encoder_input_tokens': np.zeros((r, capacity), np.int32),
         'encoder_segment_ids': np.zeros((r, capacity), np.int32)}
  for k in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'):
    out[k] = np.zeros((r, max_per_row * t), np.int32)
  out['decoder_segment_ids'] = np.zeros((r, max_per_row * t), np.int32)
  for i, members in enumerate(rows):
    at = 0
    for j, e in enumerate(members):
      m = lengths[e]
      out['encoder_input_tokens'][i, at:at + m] = enc[e, :m]
      out['encoder_segment_ids'][i, at:at + m] = j + 1
      at += m
      for k in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'):
        out[k][i, j * t:(j + 1) * t] = arrays[k][e]
      out['decoder_segment_ids'][i, j * t:(j + 1) * t] = j + 1
  info = {'examples': n, 'rows': r, 'capacity': capacity, 'max_per_row': max_per_row,
          'token_fill': round(float(lengths.sum()) / (r * capacity), 4)}
  return out, info


def packed_rows_per_batch(batch_size: int, info: dict, unit: int = 1) -> int:
  """Rows of `pack_prefix_arrays` (its `info`) that hold about `batch_size`
  examples, rounded up to a multiple of `unit` (the data-parallel size)."""
  rows = round(batch_size * info['rows'] / info['examples'])
  return max(unit, -(-rows // unit) * unit)


def load_arrays(data: sequences.SequenceData, ids: ItemIds, max_history: int,
                pipeline: str = 'auto', with_train: bool = True
                ) -> tuple[dict | None, dict, dict]:
  """Train (unless not `with_train`), validation and test model features of
  the leave-one-out task."""
  if pipeline == 'auto':
    pipeline = ('seqio' if all(importlib.util.find_spec(m) for m in ('seqio', 'tensorflow'))
                else 'numpy')
  if pipeline == 'seqio':
    from genrec.recommendation import tasks  # imports TensorFlow
    task = tasks.register_recommendation_task(data, ids, max_history)
    lengths = tasks.sequence_lengths(ids, max_history)
    return (tasks.load_train_arrays(task, lengths) if with_train else None,
            tasks.load_eval_arrays(task, 'validation', lengths),
            tasks.load_eval_arrays(task, 'test', lengths))
  if pipeline != 'numpy':
    raise ValueError(f"input_pipeline must be 'auto', 'seqio' or 'numpy', not {pipeline!r}.")
  logging.info('Input pipeline: numpy (seqio/TensorFlow not used)')
  splits = sequences.leave_one_out(data, max_history)
  lengths = sequence_lengths(ids, max_history)
  return (train_arrays(splits['train'], ids, lengths) if with_train else None,
          eval_arrays(splits['validation'], ids, lengths),
          eval_arrays(splits['test'], ids, lengths))
