import json

import numpy as np
import pytest

from conftest import data_dir_or_skip
from genrec import sequences


def _write(tmp_path, text, name='sequences.txt'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize('text,match', [
    ('1 2 3 4\n\n2 3 4 5\n', r'sequences.txt:2: empty line'),
    ('1 2 3 4\n2 3 x 5\n', r'sequences.txt:2: non-integer field'),
    ('1 2 3 4\n2\n', r'sequences.txt:2: user 2 has an empty history'),
    ('1 2 3\n', r'sequences.txt:1: user 1 has 2 item\(s\)'),
    ('1 2 3 4\n1 5 6 7\n', r'sequences.txt:2: user 1 already appeared on line 1'),
    ('1 2 0 4\n', r'sequences.txt:1: item id 0 is not positive'),
    ('1 2 3 4\n2 3 4 99\n', r'sequences.txt:2: unknown item 99: the catalog has items 1..10'),
    ('', r'no users'),
])
def test_reader_errors_name_file_line_and_fix(tmp_path, text, match):
  with pytest.raises(sequences.DataError, match=match):
    sequences.read_sequences(_write(tmp_path, text), known_items=10)


def test_attribute_reader_errors(tmp_path):
  with pytest.raises(sequences.DataError, match='not valid JSON'):
    sequences.read_item_attributes(_write(tmp_path, '{"1": [1', 'a.json'))
  with pytest.raises(sequences.DataError, match=r'exactly 1..3; missing \[2\]'):
    sequences.read_item_attributes(_write(tmp_path, json.dumps({'1': [1], '3': [2]}), 'a.json'))
  with pytest.raises(sequences.DataError, match='list of integers'):
    sequences.read_item_attributes(_write(tmp_path, json.dumps({'1': 'x'}), 'a.json'))


def test_missing_data_dir_says_how_to_set_it(monkeypatch):
  monkeypatch.delenv(sequences.DATA_DIR_ENV, raising=False)
  with pytest.raises(sequences.DataError, match='GENREC_DATA_DIR'):
    sequences.load_amazon('beauty', None)
  with pytest.raises(sequences.DataError, match='does not exist'):
    sequences.load_amazon('beauty', '/nonexistent/dir')
  with pytest.raises(sequences.DataError, match='choose one of'):
    sequences.load_amazon('books', '/tmp')
  with pytest.raises(sequences.DataError, match="choose 'synthetic' or one of"):
    sequences.load_dataset('beuaty', '/tmp')


def test_leave_one_out_protocol():
  data = sequences.SequenceData('t', 30, (np.arange(1, 8, dtype=np.int32),  # 1..7
                                          np.array([9, 8, 7], np.int32)))
  splits = sequences.leave_one_out(data, max_history=3)
  # User 1: test target 7 given [4 5 6]; validation 6 given [3 4 5];
  # train: every prefix of [1..5] -> targets 2..5.
  np.testing.assert_array_equal(splits['test'].target, [7, 7])
  np.testing.assert_array_equal(splits['test'].history[0], [4, 5, 6])
  np.testing.assert_array_equal(splits['validation'].target, [6, 8])
  np.testing.assert_array_equal(splits['validation'].history, [[3, 4, 5], [9, 0, 0]])
  np.testing.assert_array_equal(splits['train'].target, [2, 3, 4, 5])
  np.testing.assert_array_equal(splits['train'].history,
                                [[1, 0, 0], [1, 2, 0], [1, 2, 3], [2, 3, 4]])


def test_synthetic_is_deterministic_and_valid():
  a = sequences.make_synthetic(num_users=50, num_items=40, seed=3)
  b = sequences.make_synthetic(num_users=50, num_items=40, seed=3)
  assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
  assert a.num_users == 50 and all(5 <= len(s) <= 20 for s in a.sequences)
  assert min(s.min() for s in a.sequences) >= 1 and max(s.max() for s in a.sequences) <= 40
  assert len(a.item_attributes) == 41


def test_amazon_beauty_matches_published_statistics():
  data_dir = data_dir_or_skip('amazon-2014', 'beauty')
  data = sequences.load_amazon('beauty', data_dir)
  assert (data.num_users, data.num_items) == (22363, 12101)
  assert sum(len(s) for s in data.sequences) == 198502
  splits = sequences.leave_one_out(data)
  assert len(splits['test'].target) == 22363
  assert len(splits['train'].target) == 198502 - 3 * 22363
  assert splits['train'].history.shape[1] == 20
