"""The one module that registers seqio Tasks.

A recommendation task is (data set, identifier scheme, history length): its
source yields leave-one-out examples of item ids, its preprocessors turn
them into identifier tokens, and its output features share one vocabulary.
Since the identifiers are fitted at run time, tasks are registered by
`register_recommendation_task` once the identifiers exist.
"""

import functools
import re

import numpy as np
import seqio
import tensorflow as tf

from genrec import metrics
from genrec.data import sequences
from genrec.recommendation import features, preprocessors
from genrec.ids import EOS_ID, ItemIds

SPLITS = ('train', 'validation', 'test')


def task_name(data_name: str, scheme: str, max_history: int) -> str:
  return re.sub(r'[^a-zA-Z0-9_]', '_', f'genrec_{data_name}_{scheme}_h{max_history}')


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                splits: dict[str, sequences.Split]) -> tf.data.Dataset:
  del shuffle_files, seed  # one in-memory shard; shuffling happens in the trainer
  s = splits[split]
  return tf.data.Dataset.from_tensor_slices({'history': s.history, 'target_item': s.target})


def vocabulary(ids: ItemIds) -> seqio.Vocabulary:
  """Token ids are the identifier tokens themselves (see `genrec.ids.base`)."""
  return seqio.PassThroughVocabulary(size=ids.vocab_size, eos_id=EOS_ID)


def register_recommendation_task(data: sequences.SequenceData, ids: ItemIds,
                                 max_history: int = 20) -> seqio.Task:
  """Registers (or re-registers) the leave-one-out task of `data` under `ids`."""
  name = task_name(data.name, ids.scheme, max_history)
  splits = sequences.leave_one_out(data, max_history)
  vocab = vocabulary(ids)
  features = {
      'inputs': seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      'targets': seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
  }
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn=functools.partial(_dataset_fn, splits=splits), splits=SPLITS,
          num_input_examples={k: len(v.target) for k, v in splits.items()}),
      preprocessors=[functools.partial(preprocessors.items_to_tokens,
                                       token_table=ids.token_table())],
      output_features=features,
      metric_fns=[metrics.ranking_metrics])


sequence_lengths = features.sequence_lengths


def _to_numpy(ds: tf.data.Dataset, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  parts = {k: [] for k in keys}
  for batch in ds.batch(8192).as_numpy_iterator():
    for k in keys:
      parts[k].append(batch[k])
  return {k: np.concatenate(v) for k, v in parts.items()}


def load_train_arrays(task: seqio.Task, lengths: dict[str, int]) -> dict[str, np.ndarray]:
  """The train split through seqio's encoder-decoder feature converter, as numpy.

  Recommendation data fits in host memory; holding it as arrays lets the
  trainer shuffle per epoch and resume at any step exactly.
  """
  ds = task.get_dataset(lengths, split='train', shuffle=False)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
  return _to_numpy(ds, ('encoder_input_tokens', 'decoder_input_tokens',
                        'decoder_target_tokens', 'decoder_loss_weights'))


def load_eval_arrays(task: seqio.Task, split: str,
                     lengths: dict[str, int]) -> dict[str, np.ndarray]:
  """Encoder inputs and target item ids of an evaluation split, as numpy."""
  ds = task.get_dataset(lengths, split=split, shuffle=False)
  ds = seqio.utils.trim_and_pad_dataset(ds, {'inputs': lengths['inputs']})
  arrays = _to_numpy(ds, ('inputs', 'target_item'))
  return {'encoder_input_tokens': arrays['inputs'], 'target_item': arrays['target_item']}
