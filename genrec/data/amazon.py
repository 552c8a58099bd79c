r"""Converts the public Amazon review data (the 2014 release: 5-core
`reviews_<Category>_5.json.gz` and `meta_<Category>.json.gz`) into a genrec
data-set folder (see genrec/data/sequences.py):

  python -m genrec.data.amazon --reviews=reviews_Beauty_5.json.gz \
      --meta=meta_Beauty.json.gz --output_dir=data/beauty

Reviews are JSON lines with reviewerID, asin and unixReviewTime; metadata
lines are Python dict literals (as Amazon published them) or JSON, with
asin, title, brand, categories and description. As in the published
preprocessing (S3-Rec, TIGER): users and items with fewer than
`--min_interactions` reviews are removed repeatedly (the k-core filter; the
5-core files already satisfy it), each user's reviews are ordered by time,
users are numbered in order of first appearance and items in order of first
appearance along those sequences. Writes sequences.txt, item_map.tsv
(item id -> ASIN), user_map.tsv, item_text.jsonl (title, brand, categories,
description) and item2attributes.json (brand and categories as attribute
ids).
"""

import ast
import collections
import gzip
import json
import os

from absl import app, flags, logging

from genrec.data.sequences import DataError


def _open(path: str):
  return gzip.open(path, 'rt', encoding='utf-8') if path.endswith('.gz') else open(
      path, encoding='utf-8')


def _records(path: str, what: str):
  """(line number, dict) of a JSON-lines or Python-literal-lines file."""
  try:
    f = _open(path)
  except OSError as e:
    raise DataError(f'Cannot read the {what} file {path}: {e.strerror}.') from None
  with f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        try:
          obj = ast.literal_eval(line)  # the 2014 metadata is Python literals
        except (ValueError, SyntaxError):
          raise DataError(f'{path}:{lineno}: neither JSON nor a Python dict literal; is this '
                          f'the {what} file?') from None
      if not isinstance(obj, dict):
        raise DataError(f'{path}:{lineno}: expected an object per line.')
      yield lineno, obj


def read_reviews(path: str) -> list[tuple[str, str, int]]:
  """(user, asin, time) of every review."""
  out = []
  for lineno, r in _records(path, 'reviews'):
    missing = [k for k in ('reviewerID', 'asin', 'unixReviewTime') if k not in r]
    if missing:
      raise DataError(f'{path}:{lineno}: a review needs reviewerID, asin and unixReviewTime; '
                      f'{missing} missing.')
    try:
      t = int(r['unixReviewTime'])
    except (TypeError, ValueError):
      raise DataError(f'{path}:{lineno}: unixReviewTime {r["unixReviewTime"]!r} is not an '
                      'integer.') from None
    out.append((str(r['reviewerID']), str(r['asin']), t))
  if not out:
    raise DataError(f'{path}: no reviews.')
  return out


def k_core(reviews: list[tuple[str, str, int]], k: int) -> list[tuple[str, str, int]]:
  """Repeatedly drops users and items with fewer than k reviews."""
  while True:
    users = collections.Counter(u for u, _, _ in reviews)
    items = collections.Counter(i for _, i, _ in reviews)
    kept = [r for r in reviews if users[r[0]] >= k and items[r[1]] >= k]
    if len(kept) == len(reviews):
      return kept
    reviews = kept


def convert(reviews_path: str, meta_path: str | None, output_dir: str,
            min_interactions: int = 5) -> dict:
  """Writes a data-set folder; returns its statistics."""
  reviews = k_core(read_reviews(reviews_path), min_interactions)
  if not reviews:
    raise DataError(f'{reviews_path}: no user and item keeps {min_interactions} reviews; '
                    'lower --min_interactions.')
  by_user = collections.defaultdict(list)
  for pos, (u, asin, t) in enumerate(reviews):
    by_user[u].append((t, pos, asin))
  item_of: dict[str, int] = {}
  seqs = []
  for u, ev in by_user.items():  # dicts keep first-appearance order
    ev.sort()
    seqs.append((u, [item_of.setdefault(a, len(item_of) + 1) for _, _, a in ev]))
  meta = {}
  if meta_path:
    for _, m in _records(meta_path, 'metadata'):
      if m.get('asin') in item_of:
        meta[m['asin']] = m
  os.makedirs(output_dir, exist_ok=True)
  asins = sorted(item_of, key=item_of.get)
  with open(os.path.join(output_dir, 'sequences.txt'), 'w') as f:
    for n, (_, items) in enumerate(seqs, 1):
      f.write(f'{n} ' + ' '.join(map(str, items)) + '\n')
  with open(os.path.join(output_dir, 'user_map.tsv'), 'w') as f:
    f.write('user\treviewerID\n')
    f.writelines(f'{n}\t{u}\n' for n, (u, _) in enumerate(seqs, 1))
  with open(os.path.join(output_dir, 'item_map.tsv'), 'w') as f:
    f.write('item\tasin\n')
    f.writelines(f'{item_of[a]}\t{a}\n' for a in asins)
  attr_ids: dict[str, int] = {}
  attributes = {}
  with open(os.path.join(output_dir, 'item_text.jsonl'), 'w') as f:
    for a in asins:
      m = meta.get(a, {})
      cats = [c for c in m.get('categories', []) if isinstance(c, list)]
      row = {'item': item_of[a], 'asin': a, 'title': m.get('title'), 'brand': m.get('brand'),
             'categories': cats, 'description': m.get('description')}
      f.write(json.dumps(row) + '\n')
      # Attributes as in S3-Rec's preprocessing: the brand and every category
      # below the top level (the top level is the data set itself).
      names = ([f'brand:{m["brand"]}'] if m.get('brand') else []) + sorted(
          {f'category:{c}' for path in cats for c in path[1:]})
      attributes[str(item_of[a])] = [attr_ids.setdefault(x, len(attr_ids) + 1) for x in names]
  with open(os.path.join(output_dir, 'item2attributes.json'), 'w') as f:
    json.dump(attributes, f)
  stats = {'users': len(seqs), 'items': len(item_of), 'interactions': len(reviews),
           'items_with_metadata': len(meta), 'attributes': len(attr_ids)}
  logging.info('Wrote %s: %s', output_dir, stats)
  return stats


def main(argv):
  del argv
  if not flags.FLAGS.reviews or not flags.FLAGS.output_dir:
    raise app.UsageError('--reviews and --output_dir are required.')
  print(json.dumps(convert(flags.FLAGS.reviews, flags.FLAGS.meta, flags.FLAGS.output_dir,
                           flags.FLAGS.min_interactions)))


if __name__ == '__main__':
  # Flags only when run as a script: importing the converter defines none.
  flags.DEFINE_string('reviews', None, 'reviews_<Category>_5.json.gz (JSON lines).')
  flags.DEFINE_string('meta', None, 'meta_<Category>.json.gz (optional).')
  flags.DEFINE_string('output_dir', None, 'The data-set folder to write.')
  flags.DEFINE_integer('min_interactions', 5, 'The k of the k-core filter.')
  app.run(main)
