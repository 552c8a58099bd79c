"""Item representations for ranking models: the keys of an item, hashed into
one embedding table of a fixed number of rows (Singh et al., "Better
Generalization with Semantic IDs: A Case Study in Ranking for
Recommendations").

Every variant turns an item into a few integer keys; a key's embedding is row
`hash(key) mod table_rows` of one table, and the item's embedding pools its
keys' rows. So every variant spends exactly the same budget (table_rows x
dim parameters) and differs only in which items share rows:

  random       the item id itself (the baseline: items share rows by chance;
               a new item gets a row it never trained, or a stranger's)
  sid_unigram  (level, code) for every level of the Semantic ID
  sid_bigram   (level, code) of level 0 and the consecutive pairs
               (level, code_l, code_l+1)
  sid_prefix   every prefix (c_0), (c_0, c_1), ..., (c_0, ..., c_L-1)
  spm_sid      the pieces of a SentencePiece model trained on Semantic-ID
               strings (each (level, code) one symbol), weighted by how often
               items occur in training: popular items get long (specific)
               pieces, rare and new items fall back to short (shared) ones

Hashing is a fixed splitmix64 mix of (variant tag, key parts, salt):
deterministic across runs and machines.
"""

import dataclasses
import os

from absl import logging
import numpy as np
import sentencepiece as spm

VARIANTS = ('random', 'sid_unigram', 'sid_bigram', 'sid_prefix', 'spm_sid')
_SYMBOL_BASE = 0xE000  # Unicode private use area: one symbol per (level, code)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.uint64)
  with np.errstate(over='ignore'):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def hash_keys(parts: list[np.ndarray], rows: int, salt: int = 0) -> np.ndarray:
  """Rows in [0, rows) of keys given as equal-shape int arrays of their parts
  (e.g. [tag, level, code]); the same parts always give the same row."""
  h = _splitmix64(np.full(np.shape(parts[0]), salt, np.uint64))
  for p in parts:
    h = _splitmix64(h ^ np.asarray(p, np.int64).astype(np.uint64))
  return (h % np.uint64(rows)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
  """Table rows of every item's keys.

  Attributes:
    rows: int32 [num_items + 1, max_keys]; row i lists item i's table rows
      (item 0, padding, has none).
    mask: bool, same shape: which entries are keys.
    table_rows: the table's number of rows (the budget).
    variant: one of VARIANTS.
    info: figures (table rows used, keys per item, SentencePiece vocabulary).
  """
  rows: np.ndarray
  mask: np.ndarray
  table_rows: int
  variant: str
  info: dict


def _symbol_offsets(level_sizes) -> np.ndarray:
  """The first symbol (relative to _SYMBOL_BASE) of every level."""
  return np.concatenate([[0], np.cumsum(level_sizes)[:-1]]).astype(np.int64)


def sid_strings(codes: np.ndarray, level_sizes) -> list[str]:
  """Each item's Semantic ID as a string, one symbol per (level, code)."""
  offsets = _symbol_offsets(level_sizes)
  return [''.join(chr(_SYMBOL_BASE + int(o + c)) for o, c in zip(offsets, row))
          for row in np.asarray(codes)]


def strings_to_codes(strings: list[str], level_sizes) -> np.ndarray:
  """Inverse of `sid_strings`."""
  offsets = _symbol_offsets(level_sizes)
  sym = np.array([[ord(ch) - _SYMBOL_BASE for ch in s] for s in strings], np.int64)
  return (sym - offsets).astype(np.int32)


def train_sid_sentencepiece(codes: np.ndarray, level_sizes, weights: np.ndarray,
                            model_prefix: str, vocab_size: int, max_copies: int = 50
                            ) -> spm.SentencePieceProcessor:
  """SentencePiece (BPE) over the Semantic-ID strings of the training data.

  BPE, because SentencePiece's unigram trainer seeds no multi-symbol pieces
  from these space-free private-use strings (it learns the bare symbols).

  Args:
    codes: int [n, L] Semantic IDs of the items.
    weights: [n] how often each item occurs in training; an item's string is
      repeated min(weight, max_copies) times, so frequent code sequences earn
      whole pieces, and items absent from training (new items) add nothing:
      their IDs are cut into pieces learned from the training items. Every
      (level, code) symbol is also one sentence of its own, so any ID can be
      encoded without an unknown piece.
    vocab_size: upper bound of the vocabulary (it stops when no merge is left);
      raised to the number of symbols + 1 (every symbol and the unknown piece).
  """
  strings = sid_strings(codes, level_sizes)
  copies = np.minimum(np.asarray(weights, np.int64), max_copies)
  symbols = [chr(_SYMBOL_BASE + i) for i in range(int(sum(level_sizes)))]
  if vocab_size <= len(symbols):
    logging.warning('SentencePiece vocabulary %d < %d Semantic-ID symbols + 1: using %d.',
                    vocab_size, len(symbols), len(symbols) + 1)
    vocab_size = len(symbols) + 1
  sentences = symbols + [s for s, k in zip(strings, copies) for _ in range(int(k))]
  os.makedirs(os.path.dirname(model_prefix) or '.', exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type='bpe', character_coverage=1.0, hard_vocab_limit=False,
      add_dummy_prefix=False, split_by_unicode_script=False, split_by_number=False,
      split_by_whitespace=False, remove_extra_whitespaces=False,
      normalization_rule_name='identity', max_sentencepiece_length=len(level_sizes),
      input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2,
      bos_id=-1, eos_id=-1, unk_id=0)
  return spm.SentencePieceProcessor(model_file=model_prefix + '.model')


def _sid_keys(variant: str, codes: np.ndarray) -> list[list[np.ndarray]]:
  """Per key slot, its parts (arrays over items)."""
  n, levels = codes.shape
  tag = lambda t: np.full(n, t, np.int64)
  if variant == 'sid_unigram':
    return [[tag(1), tag(l), codes[:, l]] for l in range(levels)]
  if variant == 'sid_bigram':
    return [[tag(2), tag(0), codes[:, 0]]] + [
        [tag(3), tag(l), codes[:, l], codes[:, l + 1]] for l in range(levels - 1)]
  if variant == 'sid_prefix':
    return [[tag(4), tag(l)] + [codes[:, j] for j in range(l + 1)] for l in range(levels)]
  raise ValueError(variant)


def item_features(variant: str, table_rows: int, num_items: int,
                  codes: np.ndarray | None = None, level_sizes=None,
                  train_counts: np.ndarray | None = None, spm_dir: str | None = None,
                  spm_vocab_size: int | None = None, salt: int = 0) -> ItemFeatures:
  """The table rows of every item under `variant`.

  Args:
    variant: one of VARIANTS.
    table_rows: rows of the embedding table (equal across variants).
    num_items: items are ids 1..num_items.
    codes: int [num_items + 1, L] Semantic IDs (row 0 unused); every SID variant.
    level_sizes: codebook sizes of the levels.
    train_counts: [num_items + 1] training occurrences (spm_sid weights).
    spm_dir: where spm_sid writes its SentencePiece model.
    spm_vocab_size: spm_sid's vocabulary bound (default: table_rows).
    salt: changes every hash (e.g. to measure the effect of collisions).
  """
  if variant not in VARIANTS:
    raise ValueError(f'Unknown item representation {variant!r}; use one of {VARIANTS}.')
  if table_rows < 1:
    raise ValueError(f'table_rows must be >= 1, got {table_rows}.')
  info = {}
  if variant == 'random':
    ids = np.arange(num_items + 1)
    rows = hash_keys([np.zeros_like(ids), ids], table_rows, salt)[:, None]
    mask = np.ones_like(rows, bool)
  else:
    if codes is None:
      raise ValueError(f'{variant} needs the items\' Semantic IDs (codes).')
    codes = np.asarray(codes, np.int64)
    if codes.shape[0] != num_items + 1:
      raise ValueError(f'codes has {codes.shape[0]} rows; expected num_items + 1 = '
                       f'{num_items + 1}.')
    body = np.maximum(codes, 0)
    if variant == 'spm_sid':
      if train_counts is None or spm_dir is None:
        raise ValueError('spm_sid needs train_counts and spm_dir.')
      sp = train_sid_sentencepiece(body[1:], level_sizes, np.asarray(train_counts)[1:],
                                   os.path.join(spm_dir, f'sid_spm_{table_rows}'),
                                   spm_vocab_size or table_rows)
      pieces = sp.encode(sid_strings(body, level_sizes))
      width = max(len(p) for p in pieces)
      ids = np.zeros((num_items + 1, width), np.int64)
      mask = np.zeros((num_items + 1, width), bool)
      for i, p in enumerate(pieces):
        ids[i, :len(p)], mask[i, :len(p)] = p, True
      rows = hash_keys([np.full_like(ids, 5), ids], table_rows, salt)
      info.update(spm_vocab=sp.get_piece_size(),
                  pieces_per_item=round(float(mask[1:].sum(1).mean()), 2))
    else:
      slots = _sid_keys(variant, body)
      rows = np.stack([hash_keys(parts, table_rows, salt) for parts in slots], 1)
      mask = np.ones_like(rows, bool)
  rows = np.where(mask, rows, 0).astype(np.int32)
  mask[0] = False  # padding item: no keys
  info['rows_used'] = int(len(np.unique(rows[mask])))
  info['keys_per_item'] = round(float(mask[1:].sum(1).mean()), 2)
  return ItemFeatures(rows, mask, table_rows, variant, info)
