"""The converter from the public raw Amazon files, on small files written here
in that format (JSON-lines reviews, Python-literal metadata)."""

import gzip
import json

import pytest

from genrec.data import amazon, sequences


def _write_raw(tmp_path):
  reviews = []
  # u1..u4 review items in time order; 'x9' has 1 review (dropped by the 2-core).
  plan = {'u1': ['A', 'B', 'C'], 'u2': ['B', 'C', 'A', 'D'], 'u3': ['D', 'A', 'B'],
          'u4': ['C', 'D', 'A', 'x9']}
  for u, items in plan.items():
    for t, a in enumerate(items):
      reviews.append({'reviewerID': u, 'asin': a, 'unixReviewTime': 1000 + 10 * t,
                      'overall': 5.0, 'reviewText': 'ok'})
  reviews.reverse()  # file order is not time order
  rpath = tmp_path / 'reviews_Toy_5.json.gz'
  with gzip.open(rpath, 'wt') as f:
    f.writelines(json.dumps(r) + '\n' for r in reviews)
  meta = [
      {'asin': 'A', 'title': 'Alpha lipstick', 'brand': 'Acme',
       'categories': [['Beauty', 'Makeup', 'Lips']]},
      {'asin': 'B', 'title': "Beta's cream", 'categories': [['Beauty', 'Skin Care']],
       'description': 'A cream.'},
      {'asin': 'C', 'title': 'Gamma polish', 'brand': 'Acme',
       'categories': [['Beauty', 'Makeup', 'Nails']]},
      {'asin': 'Z', 'title': 'never reviewed'},
  ]
  mpath = tmp_path / 'meta_Toy.json.gz'
  with gzip.open(mpath, 'wt') as f:
    f.writelines(repr(m) + '\n' for m in meta)  # Python literals, as Amazon ships them
  return rpath, mpath


def test_convert_writes_a_folder_genrec_loads(tmp_path):
  rpath, mpath = _write_raw(tmp_path)
  out = tmp_path / 'toy'
  stats = amazon.convert(str(rpath), str(mpath), str(out), min_interactions=2)
  assert stats == {'users': 4, 'items': 4, 'interactions': 13, 'items_with_metadata': 3,
                   'attributes': 5}
  data = sequences.load_dataset(str(out))
  assert data.name == 'toy' and data.num_items == 4 and data.num_users == 4
  # The file lists u4 first (it is in reverse time order): users are numbered
  # u4, u3, u2, u1 and items by first appearance along their time-ordered reviews.
  assert [s.tolist() for s in data.sequences] == [[1, 2, 3], [2, 3, 4], [4, 1, 3, 2],
                                                  [3, 4, 1]]
  assert data.item_keys == ('', 'C', 'D', 'A', 'B')
  assert data.item_text[1]['title'] == 'Gamma polish'
  assert data.item_text[4]['description'] == 'A cream.'
  assert data.item_text[2] == {'categories': []}  # D has no metadata
  # Brand and the categories below the top level are the attributes.
  assert len(data.item_attributes[1]) == 3 and len(data.item_attributes[2]) == 0


def test_k_core_repeats_until_stable():
  # Dropping item 'c' (1 review) leaves user 'v' with 1 review, which drops 'b' to 1.
  r = [('u', 'a', 1), ('u', 'b', 2), ('w', 'a', 1), ('w', 'b', 2), ('v', 'b', 1),
       ('v', 'c', 2)]
  assert amazon.k_core(r, 2) == r[:4]


def test_bad_raw_files_are_named(tmp_path):
  bad = tmp_path / 'r.json'
  bad.write_text('{"reviewerID": "u", "asin": "a"}\n')
  with pytest.raises(sequences.DataError, match='r.json:1.*unixReviewTime'):
    amazon.convert(str(bad), None, str(tmp_path / 'o'))
  junk = tmp_path / 'j.json'
  junk.write_text('not a record\n')
  with pytest.raises(sequences.DataError, match='j.json:1: neither JSON'):
    amazon.convert(str(junk), None, str(tmp_path / 'o'))
  with pytest.raises(sequences.DataError, match='Cannot read the reviews file'):
    amazon.convert(str(tmp_path / 'missing.json.gz'), None, str(tmp_path / 'o'))
