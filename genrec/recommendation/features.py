"""Model features of a recommendation task with numpy alone.

The seqio Task in `tasks.py` is the reference pipeline. This module computes
the same arrays (asserted equal in tests/tasks_test.py) without TensorFlow,
for accelerator images that do not ship it: `load_arrays(pipeline=...)` (and
`train.train(input_pipeline=...)`) picks 'seqio' when seqio and TensorFlow
import, else 'numpy'. The model-facing conversions (`model_inputs`,
`training_arrays`) are here too.
"""

import importlib.util

from absl import logging
import numpy as np

from genrec import models
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


def sequence_windows(sequences: list[np.ndarray], max_history: int) -> list[np.ndarray]:
  """Cuts every user's training sequence into windows of at most
  `max_history` + 1 items, newest window first, so that every item after a
  user's first is a target exactly once, with up to `max_history` items of
  context inside its window (the sequence-level counterpart of the prefixes
  of `sequences.leave_one_out`). Users with one item give no window."""
  out = []
  for s in sequences:
    end = len(s)
    while end > 1:
      start = max(0, end - max_history - 1)
      out.append(np.asarray(s[start:end]))
      end = start + 1  # the next window ends where this one's context starts
  return out


def pack(lengths: np.ndarray, capacity: int) -> list[list[int]]:
  """First-fit-decreasing packing: indices of `lengths` grouped into rows whose
  lengths sum to at most `capacity` (each length <= capacity)."""
  rows: list[list[int]] = []
  free: dict[int, list[int]] = {}  # free capacity -> rows with exactly that much left
  for i in np.argsort(-np.asarray(lengths), kind='stable'):
    n = int(lengths[i])
    fits = [c for c in free if c >= n and free[c]]
    if fits:
      c = min(fits)  # the tightest row that still fits
      r = free[c].pop()
    else:
      c, r = capacity, len(rows)
      rows.append([])
    rows[r].append(int(i))
    free.setdefault(c - n, []).append(r)
  return rows


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


def sequence_train_arrays(sequences: list[np.ndarray], ids: ItemIds, max_history: int,
                          item_ids: bool = False, packed: bool = True
                          ) -> dict[str, np.ndarray]:
  """Training features of sequence-level models.

  Returns:
    With `item_ids` (SASRec): 'items' [n, max_history] (0-padded at the end)
    and 'next_items' [n, max_history] (the item after each, 0 for none); one
    window per row, or with `packed` several, each with its 'segment_ids'
    and 'positions' (0, 1, ... from its own start).
    Else (decoder-only identifier models): 'tokens' [n, (max_history + 1) *
    levels] and 'loss_weights' (1 on the tokens of every item after a
    window's first). With `packed` (as T5X packs examples), several windows
    share a row, left to right, told apart by 'segment_ids' (1, 2, ... per
    window, 0 on padding) so that attention stays within a window: most users
    are far shorter than `max_history`, and a row per window would be mostly
    padding. Without it, one window per row, 0-padded at the start.
  """
  windows = sequence_windows(sequences, max_history)
  n, h = len(windows), max_history
  if item_ids:
    rows = (pack(np.array([len(w) - 1 for w in windows]), h) if packed
            else [[i] for i in range(n)])
    out = {k: np.zeros((len(rows), h), np.int32)
           for k in ('items', 'next_items', 'segment_ids', 'positions')}
    for r, members in enumerate(rows):
      at = 0
      for seg, i in enumerate(members, 1):
        w, m = windows[i], len(windows[i]) - 1
        out['items'][r, at:at + m], out['next_items'][r, at:at + m] = w[:-1], w[1:]
        out['segment_ids'][r, at:at + m], out['positions'][r, at:at + m] = seg, np.arange(m)
        at += m
    if not packed:
      del out['segment_ids'], out['positions']
    return out
  table = ids.token_table().astype(np.int32)
  levels = ids.num_levels
  length = (h + 1) * levels
  tokens, weights = np.zeros((n, length), np.int32), np.zeros((n, length), np.int32)
  if not packed:
    for i, w in enumerate(windows):
      t = table[w].reshape(-1)
      tokens[i, length - len(t):] = t
      weights[i, length - len(t) + levels:] = t[levels:] > 0
    return {'tokens': tokens, 'loss_weights': weights}
  rows = pack(np.array([len(w) * levels for w in windows]), length)
  tokens, weights = np.zeros((len(rows), length), np.int32), np.zeros((len(rows), length), np.int32)
  segments = np.zeros((len(rows), length), np.int32)
  for r, members in enumerate(rows):
    at = 0
    for seg, i in enumerate(members, 1):
      t = table[windows[i]].reshape(-1)
      tokens[r, at:at + len(t)] = t
      weights[r, at + levels:at + len(t)] = t[levels:] > 0
      segments[r, at:at + len(t)] = seg
      at += len(t)
  return {'tokens': tokens, 'loss_weights': weights, 'segment_ids': segments}


def left_pad(tokens: np.ndarray) -> np.ndarray:
  """Rows 0-padded at the end -> the same tokens 0-padded at the start."""
  count = (tokens > 0).sum(axis=1, keepdims=True)
  index = (np.arange(tokens.shape[1])[None] + count) % tokens.shape[1]
  return np.take_along_axis(tokens, index, axis=1)


def item_scoring_arrays(arrays: dict[str, np.ndarray], ids: ItemIds, sasrec: bool
                        ) -> dict[str, np.ndarray]:
  """Features of item-scoring models: inputs and the target item id.

  SASRec reads item ids rather than identifier tokens, so its history tokens
  are mapped back to items (single-level identifiers only).
  """
  inputs = arrays['encoder_input_tokens']
  if 'target_item' in arrays:
    target = arrays['target_item']
  else:
    target = ids.tokens_to_items(arrays['decoder_target_tokens'][:, :ids.num_levels])
  if sasrec:
    if ids.num_levels != 1:
      raise ValueError(f'SASRec embeds item ids: use ID_SCHEME = @ids.AtomicIds(), not '
                       f'{ids.scheme!r} with {ids.num_levels} levels.')
    item_of_token = np.zeros(ids.vocab_size, np.int32)
    item_of_token[ids.token_table()[1:, 0]] = np.arange(1, ids.num_items + 1)
    inputs = item_of_token[inputs]
  return {'encoder_input_tokens': inputs, 'target_item': target.astype(np.int32)}


def model_inputs(arrays: dict[str, np.ndarray], ids: ItemIds,
                 config: models.ModelConfig) -> dict[str, np.ndarray]:
  """Leave-one-out features (`features.eval_arrays`, or the prefix training
  arrays) in the form the configured model reads: item ids for item-scoring
  models, histories 0-padded at the start for decoder-only models; models with their
  own conversion (`eval_inputs`, e.g. `models.ItemSidRec`) make theirs."""
  model_cls = models.model_class(config)
  if hasattr(model_cls, 'eval_inputs'):
    return {**arrays, 'encoder_input_tokens': model_cls.eval_inputs(
        arrays['encoder_input_tokens'], ids), 'target_item': item_scoring_arrays(
            arrays, ids, False)['target_item']}
  if config.num_items:
    arrays = item_scoring_arrays(arrays, ids, config.architecture == 'sasrec')
  if models.model_class(config).left_padded_inputs:
    arrays = {**arrays,
              'encoder_input_tokens': left_pad(arrays['encoder_input_tokens'])}
  return arrays


def training_arrays(data: sequences.SequenceData, ids: ItemIds, max_history: int,
                    config: models.TransformerConfig, prefix_arrays: dict | None
                    ) -> dict[str, np.ndarray]:
  """What the configured model trains on: one example per history prefix
  (`prefix_arrays`, from `load_arrays`) or, for sequence-level models, one
  per user window (`features.sequence_train_arrays`)."""
  model_cls = models.model_class(config)
  if hasattr(model_cls, 'training_arrays'):  # the model converts item windows itself
    return model_cls.training_arrays(sequence_train_arrays(
        data.train_sequences(), ids, max_history, item_ids=True), ids)
  if model_cls.training_examples == 'sequence':
    return sequence_train_arrays(data.train_sequences(), ids, max_history,
                                          item_ids=bool(config.num_items))
  return model_inputs(prefix_arrays, ids, config)


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
