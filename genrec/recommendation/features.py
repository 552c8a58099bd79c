"""Model features of a recommendation task with numpy alone.

The seqio Task in `tasks.py` is the reference pipeline. This module computes
the same arrays (asserted equal in tests/tasks_test.py) without TensorFlow,
for accelerator images that do not ship it: `train.train(input_pipeline=...)`
picks 'seqio' when seqio and TensorFlow import, else 'numpy'.
"""

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
