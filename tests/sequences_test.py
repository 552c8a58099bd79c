import json

import numpy as np
import pytest

from conftest import data_dir_or_skip
from genrec.data import sequences


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
  with pytest.raises(sequences.DataError, match="Unknown data set 'beuaty'"):
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
  assert data.item_keys[:3] == ('', 'B004756YJA', 'B004ZT0SSG')  # datamaps.json id2item


def test_datamaps_item_keys_must_cover_the_catalog(tmp_path):
  (tmp_path / 'sequences.txt').write_text('1 1 2 3\n2 2 3 1\n')
  (tmp_path / 'datamaps.json').write_text(json.dumps({'id2item': {'1': 'X1', '2': 'X2'}}))
  with pytest.raises(sequences.DataError, match=r'no external id for items \[3\]'):
    sequences.load_folder(str(tmp_path))
  (tmp_path / 'datamaps.json').write_text(json.dumps({'id2item': {'1': 'X1', '2': 'X2',
                                                                  '3': 'X3'}}))
  assert sequences.load_folder(str(tmp_path)).item_keys == ('', 'X1', 'X2', 'X3')


def test_interactions_tsv_folder_with_item_text(tmp_path):
  folder = tmp_path / 'shop'
  folder.mkdir()
  # A header, string ids, events out of time order; user z has 2 events (dropped).
  (folder / 'interactions.tsv').write_text(
      '\ufeffuser\titem\tts\n'
      'ann\tsku-b\t20\nann\tsku-a\t10\nann\tsku-c\t30\n'
      'bob\tsku-c\t5\nbob\tsku-a\t6\nbob\tsku-d\t7\n'
      'zed\tsku-a\t1\nzed\tsku-b\t2\n')
  (folder / 'item_text.jsonl').write_text(
      json.dumps({'item': 'sku-a', 'title': 'Apple', 'categories': ['Fruit']}) + '\n'
      + json.dumps({'item': 'sku-c', 'title': 'Cherry', 'brand': None}) + '\n')
  data = sequences.load_dataset(str(folder))
  assert data.num_items == 4 and data.num_users == 2
  assert data.item_keys == ('', 'sku-b', 'sku-a', 'sku-c', 'sku-d')  # first appearance
  assert data.sequences[0].tolist() == [2, 1, 3]  # ann by time: a, b, c
  assert data.item_text[2] == {'title': 'Apple', 'categories': [['Fruit']]}
  assert data.item_text[1] is None and data.item_text[3] == {'title': 'Cherry'}
  # A folder name under the data dir works too.
  assert sequences.load_dataset('shop', str(tmp_path)).num_items == 4


def test_interactions_tsv_counts_repeated_rows_once_and_reports_repeats(tmp_path, caplog):
  folder = tmp_path / 'log'
  folder.mkdir()
  (folder / 'interactions.tsv').write_text(
      'visitorid\titemid\ttimestamp\n'  # a header by its time column's name
      'u\ta\t1\nu\tb\t2\nu\tb\t2\nu\tc\t3\nu\tc\t4\n'
      'v\ta\t1\nv\tb\t2\nv\tc\t3\n')
  with caplog.at_level('INFO'):
    data = sequences.load_dataset(str(folder))
  # The exported row u,b,2 twice is one event; u's c at 3 and 4 are two events.
  assert [s.tolist() for s in data.sequences] == [[1, 2, 3, 3], [1, 2, 3]]
  assert 'dropped 1 repeated (user, item, timestamp) rows' in caplog.text
  assert '1 interactions repeat the item just before them' in caplog.text


@pytest.mark.parametrize('files, match', [
    ({}, 'exactly one of sequences.txt'),
    ({'sequences.txt': '1 1 2 3\n', 'interactions.tsv': 'a\tb\t1\n'}, 'it holds both'),
    ({'interactions.tsv': 'a\tb\n'}, r'interactions.tsv:1: expected 3 tab-separated'),
    ({'interactions.tsv': 'user\titem\ttime\na\tb\tlater\n'}, r'interactions.tsv:2: timestamp'),
    # Line 1 is a header only when it names the columns, not because it fails to parse.
    ({'interactions.tsv': 'a\tb\tyesterday\na\tc\t2\n'}, r'interactions.tsv:1: timestamp'),
    ({'sequences.txt': '1 1 2 3\n', 'item_text.jsonl': '{"item": 9, "title": "x"}\n'},
     r'item_text.jsonl:1: unknown item 9'),
    ({'sequences.txt': '1 1 2 3\n', 'item_text.jsonl': '{"title": "x"}\n'},
     r'item_text.jsonl:1: expected an object with an "item" key'),
    ({'sequences.txt': '1 1 2 3\n', 'item_text.jsonl': '{"item": 1, "title": 3}\n'},
     r'item_text.jsonl:1: "title" must be a string'),
    ({'sequences.txt': '1 1 2 3\n',
      'item_text.jsonl': '{"item": 1, "title": "a"}\n{"item": 1, "title": "b"}\n'},
     r'item_text.jsonl:2: item 1 already has text on line 1'),
])
def test_bad_folders_name_the_file_and_line(tmp_path, files, match):
  for name, body in files.items():
    (tmp_path / name).write_text(body)
  with pytest.raises(sequences.DataError, match=match):
    sequences.load_folder(str(tmp_path))


def test_unknown_data_set_lists_what_it_accepts(tmp_path):
  with pytest.raises(sequences.DataError, match="no folder 'nope' under"):
    sequences.load_dataset('nope', str(tmp_path))


def test_input_gaps_get_clear_errors(tmp_path):
  # An id beyond int32 names the file and line (not a bare OverflowError).
  p = _write(tmp_path, '1 1 2 3\n2 4 2147483648 5\n', 'big.txt')
  with pytest.raises(sequences.DataError, match=r'big.txt:2: id 2147483648 is beyond'):
    sequences.read_sequences(p)
  # A UTF-8 byte-order mark is accepted, undecodable bytes are named.
  assert len(sequences.read_sequences(_write(tmp_path, '\ufeff1 1 2 3\n', 'bom.txt'))) == 1
  (tmp_path / 'latin.txt').write_bytes(b'1 1 2 3\n2 \xe9 1 2\n')
  with pytest.raises(sequences.DataError, match=r'latin.txt:2: not UTF-8'):
    sequences.read_sequences(str(tmp_path / 'latin.txt'))
  attrs = _write(tmp_path, '\ufeff' + json.dumps({'1': [1], '2': [2]}), 'a.json')
  assert len(sequences.read_item_attributes(attrs)) == 3
  # Without an attributes file, one stray huge id is refused before allocating.
  folder = tmp_path / 'sparse'
  folder.mkdir()
  (folder / 'sequences.txt').write_text('1 1 2 3\n2 2 3 2000000000\n')
  with pytest.raises(sequences.DataError, match=r'sequences.txt:2: item id 2,000,000,000 is '
                     'far beyond the 4 distinct items'):
    sequences.load_folder(str(folder))
