"""Property-based fuzzing of the data readers: any input either loads or
raises DataError / CollectionError naming the file; never another exception.

Derandomized (a fixed example sequence) and bounded, so CI is deterministic.
"""

import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from genrec.data import sequences
from genrec.retrieval import corpus

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

# Tokens that readers meet: ids at the edges of int32, signs, separators, JSON
# punctuation, a byte-order mark, non-ASCII text.
TOKENS = st.sampled_from(['1', '2', '3', '0', '-1', '7', '2147483647', '2147483648',
                          '99999999999999999999', 'abc', '1.5', ' ', '\t', '\n', '\r\n',
                          '{', '}', '[', ']', '"', ':', ',', 'null', 'true', '"item"',
                          '"title"', '"_id"', '"text"', '\ufeff', 'é', '\x00'])
TEXT = st.lists(TOKENS, max_size=40).map(''.join) | st.text(max_size=200)
SEQ_LINES = st.lists(st.lists(st.integers(-3, 2**40), min_size=0, max_size=6), max_size=6).map(
    lambda rows: ''.join(' '.join(map(str, r)) + '\n' for r in rows))
JSON_LINES = st.lists(
    st.dictionaries(st.sampled_from(['item', 'title', 'brand', 'categories', '_id', 'text',
                                     'description']),
                    st.none() | st.integers(-2, 5) | st.text(max_size=5)
                    | st.lists(st.text(max_size=3), max_size=2), max_size=4),
    max_size=5).map(lambda rows: ''.join(json.dumps(r) + '\n' for r in rows))
CONTENT = TEXT | SEQ_LINES | JSON_LINES | st.binary(max_size=100)


def _write(folder: str, name: str, content) -> str:
  path = os.path.join(folder, name)
  with open(path, 'wb') as f:
    f.write(content if isinstance(content, bytes) else content.encode('utf-8', 'surrogatepass'))
  return path


def _loads_or_names_the_file(fn, path_part: str, errors=(sequences.DataError,)):
  try:
    fn()
  except errors as e:
    assert path_part in str(e), f'{type(e).__name__} does not name {path_part}: {e}'


@SETTINGS
@given(content=CONTENT)
def test_sequences_reader(content):
  with tempfile.TemporaryDirectory() as d:
    path = _write(d, 'sequences.txt', content)
    _loads_or_names_the_file(lambda: sequences.read_sequences(path), 'sequences.txt')


@SETTINGS
@given(content=CONTENT)
def test_attributes_reader(content):
  with tempfile.TemporaryDirectory() as d:
    path = _write(d, 'item2attributes.json', content)
    _loads_or_names_the_file(lambda: sequences.read_item_attributes(path), 'item2attributes')


@SETTINGS
@given(content=CONTENT)
def test_item_text_reader(content):
  with tempfile.TemporaryDirectory() as d:
    path = _write(d, 'item_text.jsonl', content)
    _loads_or_names_the_file(lambda: sequences.read_item_text(path, {1: 1, 2: 2, 'a': 3}),
                             'item_text.jsonl')


@SETTINGS
@given(tsv=CONTENT, text=CONTENT)
def test_tsv_folder(tsv, text):
  with tempfile.TemporaryDirectory() as d:
    _write(d, 'interactions.tsv', tsv)
    _write(d, 'item_text.jsonl', text)
    _loads_or_names_the_file(lambda: sequences.load_folder(d), d)


@SETTINGS
@given(docs=CONTENT, queries=CONTENT, qrels=CONTENT)
def test_beir_collection(docs, queries, qrels):
  with tempfile.TemporaryDirectory() as d:
    root = os.path.join(d, 'c')
    os.makedirs(os.path.join(root, 'qrels'))
    _write(root, 'corpus.jsonl', docs)
    _write(root, 'queries.jsonl', queries)
    _write(os.path.join(root, 'qrels'), 'test.tsv', qrels)
    _loads_or_names_the_file(lambda: corpus.load_beir('c', d), root,
                             (corpus.CollectionError, sequences.DataError))
