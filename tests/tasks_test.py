import numpy as np

from genrec import ids, sequences, tasks


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
