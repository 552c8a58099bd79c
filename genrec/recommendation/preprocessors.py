"""seqio preprocessors: item ids -> identifier tokens."""

import numpy as np
import tensorflow as tf


def items_to_tokens(dataset: tf.data.Dataset, token_table: np.ndarray) -> tf.data.Dataset:
  """Maps `history` (0-padded item ids) and `target_item` to token features.

  Args:
    dataset: examples with `history` int32 [max_history] and `target_item`.
    token_table: int32 [num_items + 1, L] from `ItemIds.token_table()`.

  Returns:
    Examples with `inputs` (the history's tokens, padding removed, most
    recent item last), `targets` (the target's L tokens) and `target_item`.
  """
  table = tf.constant(token_table, tf.int32)

  def fn(ex):
    history = ex['history']
    history = tf.boolean_mask(history, history > 0)
    return {
        'inputs': tf.reshape(tf.gather(table, history), [-1]),
        'targets': tf.gather(table, ex['target_item']),
        'target_item': ex['target_item'],
    }
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
