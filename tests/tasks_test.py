import numpy as np
import pytest

from genrec import ids
from genrec.data import sequences, windows
from genrec.recommendation import features, tasks


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
      from_seqio = features.load_arrays(data, item_ids, max_history, 'seqio')
      from_numpy = features.load_arrays(data, item_ids, max_history, 'numpy')
      for a, b in zip(from_seqio, from_numpy):
        assert a.keys() == b.keys()
        for k in a:
          assert a[k].dtype == b[k].dtype, k
          np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_unknown_input_pipeline_is_refused():
  data = sequences.make_synthetic(num_users=20, num_items=10, seed=0)
  with pytest.raises(ValueError, match="'auto', 'seqio' or 'numpy'"):
    features.load_arrays(data, ids.AtomicIds().fit(data), 5, 'grain')


def test_sequence_windows_cover_every_prefix_target_once():
  """Sequence-level training sees exactly the targets of the prefix examples,
  each with its context inside a window of max_history + 1 items."""
  data = sequences.make_synthetic(num_users=80, num_items=40, seed=5)
  for max_history in (1, 3, 20):
    wins = windows.sequence_windows(data.train_sequences(), max_history)
    assert all(2 <= len(w) <= max_history + 1 for w in wins)
    from_windows = sorted((tuple(w[max(0, j - max_history):j]), int(w[j]))
                          for w in wins for j in range(1, len(w)))
    split = sequences.leave_one_out(data, max_history)['train']
    n = len(split.target)
    assert len(from_windows) == n
    # Each prefix target appears once; windows give it at most max_history context.
    targets = sorted(int(t) for t in split.target)
    assert sorted(t for _, t in from_windows) == targets


def test_sequence_train_arrays_and_left_padding():
  data = sequences.SequenceData('seqtoy', 12, (np.array([3, 5, 7, 9, 11, 4], np.int32),
                                               np.array([2, 4, 6], np.int32)))
  item_ids = ids.RandomCodeIds(num_levels=2, codebook_size=4, seed=1).fit(data)
  tok = item_ids.items_to_tokens
  arrays = windows.sequence_train_arrays(data.train_sequences(), item_ids, max_history=2,
                                         packed=False)
  # User 0 trains on [3 5 7 9]: windows [5 7 9] and [3 5]; user 1 ([2]) on none.
  np.testing.assert_array_equal(arrays['tokens'][0], np.r_[tok(5), tok(7), tok(9)])
  np.testing.assert_array_equal(arrays['loss_weights'][0], [0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(arrays['tokens'][1], np.r_[[0, 0], tok(3), tok(5)])
  np.testing.assert_array_equal(arrays['loss_weights'][1], [0, 0, 0, 0, 1, 1])
  assert len(arrays['tokens']) == 2
  packed = windows.sequence_train_arrays(data.train_sequences(), item_ids, max_history=2)
  np.testing.assert_array_equal(packed['tokens'], [np.r_[tok(5), tok(7), tok(9)],
                                                   np.r_[tok(3), tok(5), [0, 0]]])
  np.testing.assert_array_equal(packed['segment_ids'], [[1] * 6, [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(packed['loss_weights'][1], [0, 0, 1, 1, 0, 0])
  items = windows.sequence_train_arrays(data.train_sequences(), item_ids, 2, item_ids=True)
  np.testing.assert_array_equal(items['items'], [[5, 7], [3, 0]])
  np.testing.assert_array_equal(items['next_items'], [[7, 9], [5, 0]])
  np.testing.assert_array_equal(items['segment_ids'], [[1, 1], [1, 0]])
  # Packed: two windows share a row; positions restart at each window.
  data3 = sequences.SequenceData('seqtoy', 12, (np.array([3, 5, 7, 9, 11, 4], np.int32),
                                                np.array([2, 4, 6, 8, 1], np.int32)))
  items = windows.sequence_train_arrays(data3.train_sequences(), item_ids, 5, item_ids=True)
  np.testing.assert_array_equal(items['items'], [[3, 5, 7, 2, 4]])
  np.testing.assert_array_equal(items['next_items'], [[5, 7, 9, 4, 6]])
  np.testing.assert_array_equal(items['segment_ids'], [[1, 1, 1, 2, 2]])
  np.testing.assert_array_equal(items['positions'], [[0, 1, 2, 0, 1]])
  single = windows.sequence_train_arrays(data3.train_sequences(), item_ids, 5, item_ids=True,
                                          packed=False)
  assert set(single) == {'items', 'next_items'} and len(single['items']) == 2
  np.testing.assert_array_equal(windows.left_pad(np.array([[4, 5, 0, 0], [1, 2, 3, 6]])),
                                [[0, 0, 4, 5], [1, 2, 3, 6]])


def test_packing_fills_rows_without_overflow_and_keeps_every_window():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 11, 500) * 4
  rows = windows.pack(lengths, 84)
  assert sorted(i for r in rows for i in r) == list(range(500))
  assert all(sum(lengths[r]) <= 84 for r in rows)
  assert len(rows) <= int(np.ceil(lengths.sum() / 84 * 1.1))  # first-fit-decreasing is tight
  data = sequences.make_synthetic(num_users=60, num_items=40, seed=3)
  item_ids = ids.RandomCodeIds(num_levels=3, codebook_size=4, seed=2).fit(data)
  a = windows.sequence_train_arrays(data.train_sequences(), item_ids, 5, packed=False)
  b = windows.sequence_train_arrays(data.train_sequences(), item_ids, 5)
  assert len(b['tokens']) < len(a['tokens'])
  assert a['loss_weights'].sum() == b['loss_weights'].sum()
  assert sorted(a['tokens'][a['tokens'] > 0]) == sorted(b['tokens'][b['tokens'] > 0])


def test_limited_packing_keeps_both_limits_and_fills_rows():
  rng = np.random.default_rng(1)
  lengths = np.minimum(rng.geometric(0.25, 2000), 20) * 4  # many short, some full
  rows = features.pack_limited(lengths, 80, 4, seed=3)
  assert sorted(i for r in rows for i in r) == list(range(2000))
  assert all(sum(lengths[r]) <= 80 and 1 <= len(r) <= 4 for r in rows)
  bound = max(len(lengths) / 4, lengths.sum() / 80)  # no packing has fewer rows
  assert len(rows) <= 1.1 * bound
  with pytest.raises(ValueError, match=r'lengths must lie in \[1, 80\]'):
    features.pack_limited(np.array([4, 84]), 80, 4)


def test_packed_prefix_rows_hold_every_example_once():
  data = sequences.make_synthetic(num_users=80, num_items=50, seed=4)
  item_ids = ids.RandomCodeIds(num_levels=3, codebook_size=4, seed=2).fit(data)
  lengths = features.sequence_lengths(item_ids, 6)
  arrays = features.train_arrays(sequences.leave_one_out(data, 6)['train'], item_ids, lengths)
  packed, info = features.pack_prefix_arrays(arrays, seed=1)
  n, t, k = len(arrays['encoder_input_tokens']), lengths['targets'], info['max_per_row']
  assert info['examples'] == n and info['rows'] == len(packed['encoder_input_tokens']) < n
  assert packed['decoder_target_tokens'].shape[1] == k * t
  # Every example's (history, target) pair is in exactly one segment of one row.
  want = sorted((tuple(h[h > 0]), tuple(y)) for h, y in
                zip(arrays['encoder_input_tokens'], arrays['decoder_target_tokens']))
  got = []
  for r in range(info['rows']):
    enc, seg = packed['encoder_input_tokens'][r], packed['encoder_segment_ids'][r]
    for j in range(1, k + 1):
      if (seg == j).any():
        y = packed['decoder_target_tokens'][r, (j - 1) * t:j * t]
        assert (packed['decoder_segment_ids'][r, (j - 1) * t:j * t] == j).all()
        got.append((tuple(enc[seg == j]), tuple(y)))
  assert sorted(got) == want
  assert packed['decoder_loss_weights'].sum() == arrays['decoder_loss_weights'].sum()
