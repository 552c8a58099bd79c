import numpy as np
import pytest

from genrec import ids
from genrec.data import sequences
from genrec.recommendation import tasks, train


def test_task_turns_items_into_identifier_tokens():
  data = sequences.SequenceData('tasktoy', 12, (np.array([3, 5, 7, 9, 11], np.int32),
                                                np.array([2, 4, 6], np.int32)))
  item_ids = ids.RandomCodeIds(num_levels=2, codebook_size=4, seed=1).fit(data)
  task = tasks.register_recommendation_task(data, item_ids, max_history=2)
  lengths = tasks.sequence_lengths(item_ids, 2)
  assert lengths == {'inputs': 4, 'targets': 2}
  train = tasks.load_train_arrays(task, lengths)
  tok = item_ids.items_to_tokens
  # Train targets of user 1 are items 5 and 7 (histories [3] and [3, 5]).
  np.testing.assert_array_equal(train['decoder_target_tokens'], tok(np.array([5, 7])))
  np.testing.assert_array_equal(train['encoder_input_tokens'][0], np.r_[tok(3), [0, 0]])
  np.testing.assert_array_equal(train['encoder_input_tokens'][1], np.r_[tok(3), tok(5)])
  np.testing.assert_array_equal(train['decoder_input_tokens'][:, 0], [0, 0])
  np.testing.assert_array_equal(train['decoder_input_tokens'][:, 1],
                                train['decoder_target_tokens'][:, 0])
  test = tasks.load_eval_arrays(task, 'test', lengths)
  np.testing.assert_array_equal(test['target_item'], [11, 6])
  np.testing.assert_array_equal(test['encoder_input_tokens'][0], np.r_[tok(7), tok(9)])
  np.testing.assert_array_equal(test['encoder_input_tokens'][1], np.r_[tok(2), tok(4)])
  # Re-registering with other data replaces the task.
  again = tasks.register_recommendation_task(data, item_ids, max_history=2)
  assert again.name == task.name


def test_numpy_pipeline_equals_seqio_task():
  data = sequences.make_synthetic(num_users=60, num_items=40, seed=3)
  for scheme in (ids.AtomicIds(), ids.RandomCodeIds(num_levels=3, codebook_size=4, seed=2)):
    item_ids = scheme.fit(data)
    for max_history in (3, 20):
      from_seqio = train.load_arrays(data, item_ids, max_history, 'seqio')
      from_numpy = train.load_arrays(data, item_ids, max_history, 'numpy')
      for a, b in zip(from_seqio, from_numpy):
        assert a.keys() == b.keys()
        for k in a:
          assert a[k].dtype == b[k].dtype, k
          np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_unknown_input_pipeline_is_refused():
  data = sequences.make_synthetic(num_users=20, num_items=10, seed=0)
  with pytest.raises(ValueError, match="'auto', 'seqio' or 'numpy'"):
    train.load_arrays(data, ids.AtomicIds().fit(data), 5, 'grain')
