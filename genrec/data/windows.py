"""User sequences cut into training windows, and the array layouts that
sequence-level models read: windows packed several to a row, item ids or
their identifier tokens, histories 0-padded at the start.

Plain numpy over `SequenceData.train_sequences()` and `ItemIds`: the model
classes (`genrec.models`) build their inputs from these, whatever application
trains them.
"""

import numpy as np

from genrec.ids import ItemIds


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
