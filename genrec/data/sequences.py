"""Interaction data: data-set folders, readers, the synthetic catalog, splits.

`SequenceData` is what every task, identifier scheme and baseline reads: the
time-ordered item sequence of each user and, where the data set has them, the
items' categorical attributes, texts and external ids. Readers validate their
input and fail with the file, the line and the fix.

A data-set folder (`DATASET = '/path/to/folder'`, or a folder name under the
data dir) holds:

  sequences.txt        `user item item ...` per line, item ids 1..N, time order
  or interactions.tsv  `user <TAB> item <TAB> timestamp` per line, any string
                       ids (a header line naming the columns is allowed);
                       repeated (user, item, timestamp) rows count once;
                       items are numbered 1..N
                       in order of first appearance, each user's items sorted
                       by timestamp; users with fewer than 3 are dropped
  item_text.jsonl      optional: {"item": id, "title", "brand", "categories",
                       "description"} per line (any of the text fields may be
                       missing or null); with interactions.tsv, "item" is the
                       external id of the TSV
  item2attributes.json optional: {"item id": [attribute ids]} for items 1..N
  item_map.tsv         optional with sequences.txt: `item id <TAB> external id`

The Amazon 2014 folders under <data dir>/amazon-2014/ are such folders;
`python -m genrec.data.amazon` writes one from the public raw review and
metadata files.
"""

import collections
import dataclasses
import json
import os

from absl import logging
import numpy as np

DATA_DIR_ENV = 'GENREC_DATA_DIR'
MAX_ID = 2**31 - 1  # ids are int32 on the device
# An inferred catalog size (no attributes file) may exceed the number of
# distinct item ids by this factor at most: item ids are meant to be dense.
MAX_SPARSITY = 4
AMAZON_DATASETS = ('beauty', 'sports', 'toys')
MIN_INTERACTIONS = 3  # one training target, one validation and one test item


class DataError(ValueError):
  """Malformed or inconsistent input data."""


@dataclasses.dataclass(frozen=True)
class SequenceData:
  """Users' item sequences.

  Attributes:
    name: data set name.
    num_items: items are ids 1..num_items (0 is padding).
    sequences: per user, the time-ordered int32 item ids.
    item_attributes: per item id (index 0 unused), an int32 array of
      attribute ids; None when the data set has none.
    item_text: per item id (index 0 unused), a dict of text fields ('title',
      'brand', 'categories', 'description') or None for an item without
      text; None when the data set has no item text.
    item_keys: per item id (index 0 ''), the external id (e.g. the ASIN);
      None when the data set names items by number only.
  """
  name: str
  num_items: int
  sequences: tuple[np.ndarray, ...]
  item_attributes: tuple[np.ndarray, ...] | None = None
  item_text: tuple[dict | None, ...] | None = None
  item_keys: tuple[str, ...] | None = None

  @property
  def num_users(self) -> int:
    return len(self.sequences)

  def train_sequences(self) -> list[np.ndarray]:
    """The training part of every user (validation and test items removed)."""
    return [s[:-2] for s in self.sequences]

  def item_target_counts(self) -> np.ndarray:
    """[num_items + 1] how often every item is a training target (not the first
    item of a training part, which is only ever history)."""
    return self._item_counts(start=1)

  def item_train_counts(self) -> np.ndarray:
    """[num_items + 1] occurrences of every item in the training parts."""
    return self._item_counts(start=0)

  def _item_counts(self, start: int) -> np.ndarray:
    parts = [s[start:] for s in self.train_sequences()]
    return np.bincount(np.concatenate(parts) if parts else np.zeros(0, np.int64),
                       minlength=self.num_items + 1).astype(np.int64)


def read_text(path: str) -> str:
  """A whole UTF-8 text file (a byte-order mark is accepted).

  Raises:
    DataError: naming the file (and the line of an undecodable byte) when it
      cannot be read or is not UTF-8.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'Cannot read {path}: {e.strerror}.') from None
  try:
    return raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    raise DataError(f'{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the '
                    'file as UTF-8.') from None


def read_lines(path: str) -> list[str]:
  """`read_text` split into lines (without their line ends)."""
  return read_text(path).splitlines()


def json_objects(path: str, expected: str, error: type[DataError] = DataError):
  """Yields ('file:line', object) for every non-empty line of a JSON-lines file.

  Args:
    expected: what a line should look like, for the error message.
    error: the DataError subclass to raise.
  """
  try:
    lines = read_lines(path)
  except DataError as e:
    raise error(str(e)) from None
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f'{path}:{lineno}'
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise error(f'{where}: not valid JSON ({e.msg}); expected {expected}.') from None
    if not isinstance(obj, dict):
      raise error(f'{where}: expected a JSON object {expected}, got {type(obj).__name__}.')
    yield where, obj


def resolve_data_dir(data_dir: str | None) -> str:
  """The data-dir setting, else $GENREC_DATA_DIR; errors name both."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    raise DataError(f'No data directory: pass DATA_DIR (gin: --gin_bindings="DATA_DIR=\'...\'") '
                    f'or set ${DATA_DIR_ENV}.')
  if not os.path.isdir(data_dir):
    raise DataError(f'Data directory {data_dir!r} does not exist; point DATA_DIR or '
                    f'${DATA_DIR_ENV} at the folder that holds amazon-2014/.')
  return data_dir


def read_sequences(path: str, known_items: int | None = None) -> list[np.ndarray]:
  """Reads `user_id item_id item_id ...` lines (ids are positive integers).

  Args:
    path: the sequences file.
    known_items: if given, item ids must be in 1..known_items.

  Returns:
    The item sequence of every user, in file order.
  """
  sequences, seen_users = [], {}
  for lineno, line in enumerate(read_lines(path), 1):
    where = f'{path}:{lineno}'
    fields = line.split()
    if not fields:
      raise DataError(f'{where}: empty line; every line must be '
                      '"user_id item_id item_id ..." (remove the blank line).')
    try:
      ids = [int(x) for x in fields]
    except ValueError:
      raise DataError(f'{where}: non-integer field in {line.strip()[:80]!r}; expected '
                      '"user_id item_id item_id ..." with positive integer ids.') from None
    too_big = [x for x in ids if abs(x) > MAX_ID]
    if too_big:
      raise DataError(f'{where}: id {too_big[0]} is beyond {MAX_ID:,} (int32); renumber '
                      'the items 1..N (item_map.tsv can keep the original ids).')
    user, items = ids[0], np.asarray(ids[1:], np.int32)
    if user in seen_users:
      raise DataError(f'{where}: user {user} already appeared on line {seen_users[user]}; '
                      'merge the two lines into one time-ordered sequence.')
    seen_users[user] = lineno
    if items.size == 0:
      raise DataError(f'{where}: user {user} has an empty history; drop the line '
                      f'(every user needs at least {MIN_INTERACTIONS} items).')
    if items.size < MIN_INTERACTIONS:
      raise DataError(f'{where}: user {user} has {items.size} item(s), fewer than the '
                      f'{MIN_INTERACTIONS} that leave-one-out needs (train, validation, test); '
                      'filter such users out (e.g. the 5-core filter).')
    if (items <= 0).any():
      raise DataError(f'{where}: item id {int(items[items <= 0][0])} is not positive; '
                      'item ids are 1-based (0 is reserved for padding).')
    if known_items is not None and (items > known_items).any():
      raise DataError(f'{where}: unknown item {int(items[items > known_items][0])}: the '
                      f'catalog has items 1..{known_items}; fix the id or add the item '
                      'to the attributes file.')
    sequences.append(items)
  if not sequences:
    raise DataError(f'{path}: no users; the file is empty.')
  return sequences


def read_item_attributes(path: str) -> list[np.ndarray]:
  """Reads `{"item_id": [attribute_id, ...]}`; item ids must be exactly 1..N."""
  try:
    raw = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: not valid JSON ({e}); expected '
                    '{"item_id": [attribute_id, ...], ...}.') from e
  if not isinstance(raw, dict) or not raw:
    raise DataError(f'{path}: expected a non-empty JSON object {{"item_id": [attribute ids]}}.')
  bad = [k for k in raw if not (k.strip().isascii() and k.strip().isdigit())]
  if bad:
    raise DataError(f'{path}: key {bad[0]!r} is not a positive integer item id.')
  items = {int(k): v for k, v in raw.items()}
  if max(items) > MAX_ID:
    raise DataError(f'{path}: item id {max(items)} is beyond {MAX_ID:,}; number items 1..N.')
  n = max(items)
  missing = sorted(set(range(1, n + 1)) - set(items))
  if min(items) < 1 or missing:
    raise DataError(f'{path}: item ids must be exactly 1..{n}; '
                    f'{"missing " + str(missing[:5]) if missing else "found id " + str(min(items))}.')
  attrs = [np.zeros(0, np.int32)]
  for i in range(1, n + 1):
    v = items[i]
    if not isinstance(v, list) or not all(isinstance(a, int) for a in v):
      raise DataError(f'{path}: item {i}: attributes must be a list of integers, got {v!r}.')
    attrs.append(np.asarray(v, np.int32))
  return attrs


TEXT_FIELDS = ('title', 'brand', 'categories', 'description')


def read_item_text(path: str, item_ids: dict) -> list[dict | None]:
  """Reads item_text.jsonl: {"item": id, "title", "brand", "categories",
  "description"} per line.

  Args:
    path: the file.
    item_ids: the key of "item" (an int, or the external id string) -> the
      item id 1..N.

  Returns:
    Per item id 0..N (0 unused), its text fields, or None for items without a
    line.
  """
  out: list[dict | None] = [None] * (max(item_ids.values(), default=0) + 1)
  seen = {}
  for where, obj in json_objects(path, '{"item": id, "title": ..., "brand": ..., '
                                 '"categories": [...]}'):
    if 'item' not in obj:
      raise DataError(f'{where}: expected an object with an "item" key (the item id).')
    key = obj['item']
    if isinstance(key, bool) or not isinstance(key, (int, str)):
      raise DataError(f'{where}: "item" must be an item id (integer or string), got {key!r}.')
    if key not in item_ids and isinstance(key, str) and key.isdigit():
      key = int(key)  # "item": "12" in a folder of numbered items
    if key not in item_ids:
      raise DataError(f'{where}: unknown item {key!r}: no interaction names it; drop the '
                      'line or fix the id.')
    item = item_ids[key]
    if item in seen:
      raise DataError(f'{where}: item {key!r} already has text on line {seen[item]}; keep '
                      'one line per item.')
    seen[item] = where.rsplit(':', 1)[1]
    fields = {}
    for name in TEXT_FIELDS:
      v = obj.get(name)
      if v is None:
        continue
      if name == 'categories':
        if isinstance(v, str):
          v = [[v]]
        elif isinstance(v, list) and v and all(isinstance(c, str) for c in v):
          v = [v]
        if not (isinstance(v, list) and all(
            isinstance(c, list) and all(isinstance(x, str) for x in c) for c in v)):
          raise DataError(f'{where}: "categories" must be a list of category paths '
                          f'(lists of strings), got {str(v)[:80]}.')
      elif not isinstance(v, str):
        raise DataError(f'{where}: "{name}" must be a string or null, got {str(v)[:80]}.')
      fields[name] = v
    out[item] = fields
  return out


def read_interactions_tsv(path: str) -> tuple[list[np.ndarray], list[str]]:
  """Reads `user <TAB> item <TAB> timestamp` lines (string ids, numeric times).

  Items are numbered 1..N in order of first appearance in the file; each
  user's items are sorted by timestamp (ties keep file order); users with
  fewer than MIN_INTERACTIONS items are dropped (logged).

  Returns:
    (the sequences of the kept users in order of first appearance, the
    external id of every item id, index 0 '').
  """
  events = collections.defaultdict(list)
  item_ids: dict[str, int] = {}
  seen, duplicates = set(), 0
  for lineno, line in enumerate(read_lines(path), 1):
    where = f'{path}:{lineno}'
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) != 3:
      raise DataError(f'{where}: expected 3 tab-separated fields "user<TAB>item<TAB>'
                      f'timestamp", got {len(fields)}: {line.strip()[:80]!r}.')
    user, item, ts = (x.strip() for x in fields)
    if lineno == 1 and is_header(fields):
      continue
    try:
      t = float(ts)
    except ValueError:
      raise DataError(f'{where}: timestamp {ts!r} is not a number (seconds or any '
                      'sortable number). A header line must name the columns, e.g. '
                      '"user<TAB>item<TAB>timestamp".') from None
    if not user or not item:
      raise DataError(f'{where}: empty user or item id.')
    if (user, item, t) in seen:  # an exported log's repeated rows, not a new event
      duplicates += 1
      continue
    seen.add((user, item, t))
    item_ids.setdefault(item, len(item_ids) + 1)
    events[user].append((t, lineno, item_ids[item]))
  if not events:
    raise DataError(f'{path}: no interactions; the file is empty.')
  if duplicates:
    logging.warning('%s: dropped %d repeated (user, item, timestamp) rows; each counts once.',
                    path, duplicates)
  seqs, dropped, repeats = [], 0, 0
  for user, ev in events.items():
    if len(ev) < MIN_INTERACTIONS:
      dropped += 1
      continue
    ev.sort()
    seq = np.asarray([i for _, _, i in ev], np.int32)
    repeats += int(np.sum(seq[1:] == seq[:-1]))
    seqs.append(seq)
  if dropped:
    logging.info('%s: dropped %d of %d users with fewer than %d interactions', path, dropped,
                 len(events), MIN_INTERACTIONS)
  if repeats:
    logging.warning('%s: %d interactions repeat the item just before them (same user, '
                    'other timestamp); they are kept as events. If they are duplicates, '
                    'remove them from the file.', path, repeats)
  if not seqs:
    raise DataError(f'{path}: no user has {MIN_INTERACTIONS} or more interactions '
                    '(leave-one-out needs a training, a validation and a test item).')
  keys = [''] + sorted(item_ids, key=item_ids.get)
  return seqs, keys


HEADER_NAMES = (('user', 'user_id', 'userid', 'uid', 'customer', 'customer_id', 'session',
                 'session_id', 'visitor', 'visitorid', 'visitor_id'),
                ('item', 'item_id', 'itemid', 'iid', 'product', 'product_id', 'asin'),
                ('timestamp', 'time', 'ts', 'date', 'datetime', 'unixtime', 'unix_time',
                 'event_time'))


def is_header(fields: list[str]) -> bool:
  """Whether the first line of interactions.tsv names its columns rather
  than being an interaction: its time column has a name of HEADER_NAMES, or
  both its user and item columns do (any case)."""
  names = [f.strip().lower() for f in fields]
  return len(names) == 3 and (names[2] in HEADER_NAMES[2] or (
      names[0] in HEADER_NAMES[0] and names[1] in HEADER_NAMES[1]))


def read_item_map(path: str, num_items: int) -> list[str]:
  """Reads `item id <TAB> external id` lines for items 1..num_items."""
  keys = [''] * (num_items + 1)
  for lineno, line in enumerate(read_lines(path), 1):
    fields = line.split('\t')
    if len(fields) != 2 or not fields[0].strip().isdigit():
      if lineno == 1:
        continue  # a header line
      raise DataError(f'{path}:{lineno}: expected "item id<TAB>external id".')
    item = int(fields[0])
    if not 1 <= item <= num_items:
      raise DataError(f'{path}:{lineno}: item {item} is outside 1..{num_items}.')
    keys[item] = fields[1].strip()
  return keys


def inferred_catalog_size(sequences: list[np.ndarray], path: str) -> int:
  """The largest item id, when no file declares the catalog; refuses ids so
  sparse that the catalog would be mostly empty rows (one stray id of 2e9
  would otherwise ask for gigabytes of embeddings)."""
  largest = int(max(s.max() for s in sequences))
  distinct = len(np.unique(np.concatenate(sequences)))
  if largest > MAX_SPARSITY * distinct + 1000:
    where = next(i for i, s in enumerate(sequences, 1) if s.max() == largest)
    raise DataError(f'{path}:{where}: item id {largest:,} is far beyond the {distinct:,} '
                    f'distinct items (ids must be dense, 1..N): renumber the items, or '
                    'declare the catalog with item2attributes.json.')
  return largest


def load_folder(folder: str, name: str | None = None) -> SequenceData:
  """Loads a data-set folder (see the module docstring for its files)."""
  name = name or os.path.basename(os.path.normpath(folder))
  seq_path = os.path.join(folder, 'sequences.txt')
  tsv_path = os.path.join(folder, 'interactions.tsv')
  attr_path = os.path.join(folder, 'item2attributes.json')
  text_path = os.path.join(folder, 'item_text.jsonl')
  map_path = os.path.join(folder, 'item_map.tsv')
  has_seq, has_tsv = os.path.exists(seq_path), os.path.exists(tsv_path)
  if has_seq == has_tsv:
    raise DataError(f'{folder} must hold exactly one of sequences.txt ("user item item ...") '
                    f'and interactions.tsv ("user<TAB>item<TAB>timestamp"); it holds '
                    f'{"both" if has_seq else "neither"}.')
  attributes = read_item_attributes(attr_path) if os.path.exists(attr_path) else None
  if has_tsv:
    sequences, keys = read_interactions_tsv(tsv_path)
    num_items = len(keys) - 1
    if attributes is not None and len(attributes) - 1 != num_items:
      raise DataError(f'{attr_path} describes {len(attributes) - 1} items but {tsv_path} '
                      f'has {num_items}; with interactions.tsv, give attributes through '
                      'item_text.jsonl or number the items yourself in sequences.txt.')
    text_keys = {k: i for i, k in enumerate(keys) if i}
  else:
    num_items = len(attributes) - 1 if attributes is not None else None
    sequences = read_sequences(seq_path, known_items=num_items)
    if num_items is None:
      num_items = inferred_catalog_size(sequences, seq_path)
    keys = read_item_map(map_path, num_items) if os.path.exists(map_path) else None
    datamaps = os.path.join(folder, 'datamaps.json')
    if keys is None and os.path.exists(datamaps):
      keys = read_datamaps_items(datamaps, num_items)
    text_keys = {i: i for i in range(1, num_items + 1)}
  text = None
  if os.path.exists(text_path):
    text = read_item_text(text_path, text_keys)
    text += [None] * (num_items + 1 - len(text))
  return SequenceData(name=name, num_items=num_items, sequences=tuple(sequences),
                      item_attributes=None if attributes is None else tuple(attributes),
                      item_text=None if text is None else tuple(text),
                      item_keys=None if keys is None else tuple(keys))


def load_amazon(name: str, data_dir: str | None = None) -> SequenceData:
  """Loads amazon-2014/{beauty,sports,toys} from the data dir."""
  if name not in AMAZON_DATASETS:
    raise DataError(f'Unknown Amazon data set {name!r}; choose one of {AMAZON_DATASETS}.')
  folder = os.path.join(resolve_data_dir(data_dir), 'amazon-2014', name)
  if not os.path.exists(os.path.join(folder, 'sequences.txt')):
    raise DataError(f'{folder}/sequences.txt not found; the data dir must hold amazon-2014/'
                    f'{name}/sequences.txt (see amazon-2014/README.md).')
  return load_folder(folder, name)


def make_synthetic(num_users: int = 2000, num_items: int = 600, num_topics: int = 12,
                   min_len: int = 5, max_len: int = 20, p_follow: float = 0.8,
                   seed: int = 0) -> SequenceData:
  """A synthetic catalog whose sessions follow latent topics.

  Items belong to topics and carry attributes (topic, sub-topic, a brand).
  Within a topic items lie on a ring; a user has one or two topics and moves
  along a topic's ring by small steps (with probability `p_follow`), or jumps
  to a popular item of one of their topics. So the next item is predictable
  from the history, and a sequence model beats popularity by a wide margin.

  Returns:
    Deterministic data for the seed, in the same form as the Amazon readers.
  """
  rng = np.random.default_rng(seed)
  topic_of = rng.integers(0, num_topics, num_items)  # item index -> topic
  members = [np.flatnonzero(topic_of == t) for t in range(num_topics)]
  members = [rng.permutation(m) for m in members if m.size]  # ring order
  ring_pos = {}
  for t, m in enumerate(members):
    for pos, item in enumerate(m):
      ring_pos[item] = (t, pos)
  popularity = rng.zipf(1.6, num_items).astype(np.float64)
  sequences = []
  for _ in range(num_users):
    topics = rng.choice(len(members), size=rng.integers(1, 3), replace=False)
    length = int(rng.integers(min_len, max_len + 1))
    t = topics[0]
    item = rng.choice(members[t])
    seq = [item]
    while len(seq) < length:
      t, pos = ring_pos[item]
      if rng.random() < p_follow:
        ring = members[t]
        item = ring[(pos + rng.integers(1, 4)) % ring.size]
      else:
        t = rng.choice(topics)
        w = popularity[members[t]]
        item = rng.choice(members[t], p=w / w.sum())
      seq.append(item)
    sequences.append(np.asarray(seq, np.int32) + 1)
  num_brands = max(2, num_items // 20)
  brand = rng.integers(0, num_brands, num_items)
  sub = np.array([ring_pos[i][1] * 4 // max(1, members[ring_pos[i][0]].size)
                  for i in range(num_items)])
  attributes = [np.zeros(0, np.int32)] + [
      np.asarray([topic_of[i], num_topics + topic_of[i] * 4 + sub[i],
                  num_topics * 5 + brand[i]], np.int32) for i in range(num_items)]
  return SequenceData(name='synthetic', num_items=num_items, sequences=tuple(sequences),
                      item_attributes=tuple(attributes))


def load_dataset(name: str, data_dir: str | None = None, **synthetic_kwargs) -> SequenceData:
  """A data set by name: 'synthetic' (built in, no download), an Amazon 2014
  set ('beauty', 'sports', 'toys' under <data dir>/amazon-2014/), or a
  data-set folder: a path, or a folder name under the data dir."""
  if name == 'synthetic':
    return make_synthetic(**synthetic_kwargs)
  if name in AMAZON_DATASETS:
    return load_amazon(name, data_dir)
  if os.path.isdir(name):
    return load_folder(name)
  base = data_dir or os.environ.get(DATA_DIR_ENV)
  if base and os.path.isdir(os.path.join(base, name)):
    return load_folder(os.path.join(base, name))
  raise DataError(f"Unknown data set {name!r}: not 'synthetic', not one of {AMAZON_DATASETS}, "
                  f'and no folder {name!r}{" under " + repr(base) if base else ""}; give the '
                  'path of a data-set folder (sequences.txt or interactions.tsv, see '
                  'genrec/data/sequences.py).')


@dataclasses.dataclass(frozen=True)
class Split:
  """Examples of one split: padded item histories and target items."""
  history: np.ndarray  # int32 [n, max_history], most recent item last, 0-padded at the end
  target: np.ndarray  # int32 [n]


def pack_split(histories: list[np.ndarray], targets: list[int], max_history: int) -> Split:
  """A Split from per-example histories (each at most `max_history` items,
  0-padded at the end) and their targets."""
  h = np.zeros((len(histories), max_history), np.int32)
  for i, x in enumerate(histories):
    h[i, :len(x)] = x
  return Split(history=h, target=np.asarray(targets, np.int32))


def write_external_ids(path: str, external_ids) -> None:
  """Writes one external id per line (line i: the id of item i), atomically:
  what a run keeps for its export's item map (`genrec.export_lib.write`)."""
  with open(path + '.tmp', 'w') as f:
    f.write(''.join(f'{key}\n' for key in external_ids))
  os.replace(path + '.tmp', path)


def read_datamaps_items(path: str, num_items: int) -> list[str] | None:
  """The external ids (ASINs) of items 1..num_items from the "id2item" map of a
  datamaps.json (the S3-Rec / TIGER preprocessing); None when it has none."""
  try:
    with open(path) as f:
      id2item = json.load(f).get('id2item')
  except (OSError, json.JSONDecodeError, AttributeError) as e:
    raise DataError(f'{path}: not a JSON object with an "id2item" map ({e}).') from None
  if not id2item:
    return None
  keys = [''] + [id2item.get(str(i)) for i in range(1, num_items + 1)]
  missing = [i for i, k in enumerate(keys) if i and not k]
  if missing:
    raise DataError(f'{path}: "id2item" has no external id for items {missing[:10]} (of '
                    f'1..{num_items}); fix or remove the file.')
  return keys


def leave_one_out(data: SequenceData, max_history: int = 20) -> dict[str, Split]:
  """The published protocol: per user the last item is the test target, the
  second to last the validation target; training examples are every prefix of
  the rest. Histories keep the last `max_history` items."""
  out = {'train': ([], []), 'validation': ([], []), 'test': ([], [])}
  for s in data.sequences:
    n = len(s)
    for t in range(1, n - 2):
      out['train'][0].append(s[max(0, t - max_history):t])
      out['train'][1].append(int(s[t]))
    out['validation'][0].append(s[:n - 2][-max_history:])
    out['validation'][1].append(int(s[n - 2]))
    out['test'][0].append(s[:n - 1][-max_history:])
    out['test'][1].append(int(s[n - 1]))
  return {k: pack_split(h, t, max_history) for k, (h, t) in out.items()}
