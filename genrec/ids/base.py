"""The identifier interface: items <-> fixed-length token codes.

A scheme is *fitted* on a data set and yields `ItemIds`, the artifact that the
tasks, the model vocabulary and the decoder use. Every scheme, from one atomic
token per item to learned semantic IDs, plugs in behind this interface, so an
ablation is a one-line gin change (`train.id_scheme = @ids.RandomCodeIds()`).

Vocabulary layout shared by inputs and targets:
  0 = padding (and decoder start), 1 = end of sequence,
  then the codes of level 0, level 1, ... each in its own token range.
"""

import abc
import dataclasses
import json
import math
import os

import numpy as np

PAD_ID = 0
EOS_ID = 1
NUM_RESERVED_TOKENS = 2


QUANTIZER = 'quantizer.npz'


@dataclasses.dataclass(frozen=True)
class ItemIds:
  """Fitted identifiers.

  Attributes:
    codes: int32 [num_items + 1, num_levels]; row i holds the codes of item id
      i (item ids are 1-based, row 0 is unused and all -1).
    level_sizes: codebook size of every level.
    scheme: the name of the scheme that produced the codes.
    info: figures of the fit (e.g. reconstruction error), saved alongside.
  """
  codes: np.ndarray
  level_sizes: tuple[int, ...]
  scheme: str
  info: dict = dataclasses.field(default_factory=dict)
  # What assigns codes to new content without fitting again (product
  # quantization: its mean, projection, rotation and centroids; `extend`).
  quantizer: dict | None = dataclasses.field(default=None, compare=False, repr=False)

  def __post_init__(self):
    codes = np.asarray(self.codes)
    if codes.ndim != 2 or codes.shape[1] != len(self.level_sizes):
      raise ValueError(f'codes must be [num_items + 1, {len(self.level_sizes)}], '
                       f'got shape {codes.shape}.')
    body = codes[1:]
    if (body < 0).any() or (body >= np.asarray(self.level_sizes)).any():
      raise ValueError('codes out of range of level_sizes '
                       f'{self.level_sizes}: min {body.min()}, max per level '
                       f'{body.max(axis=0).tolist()}.')
    object.__setattr__(self, 'codes', codes.astype(np.int32))
    keys = self._keys(body)
    order = np.argsort(keys, kind='stable')
    object.__setattr__(self, '_sorted_keys', keys[order])
    object.__setattr__(self, '_sorted_items', (order + 1).astype(np.int32))

  # -- sizes ---------------------------------------------------------------
  @property
  def num_items(self) -> int:
    return self.codes.shape[0] - 1

  @property
  def num_levels(self) -> int:
    return len(self.level_sizes)

  @property
  def level_offsets(self) -> np.ndarray:
    return NUM_RESERVED_TOKENS + np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]])

  @property
  def vocab_size(self) -> int:
    """Tokens used, rounded up to a multiple of 128 (shards evenly, MXU friendly)."""
    used = NUM_RESERVED_TOKENS + sum(self.level_sizes)
    return -(-used // 128) * 128

  @property
  def num_collisions(self) -> int:
    """Items whose code tuple is shared with an earlier item."""
    return int(self.num_items - np.unique(self._sorted_keys).size)

  # -- mapping ---------------------------------------------------------------
  def _keys(self, codes: np.ndarray) -> np.ndarray:
    """A sortable key of each code tuple ([..., L] -> [...]): its mixed-radix
    integer while that fits in int64, else its big-endian bytes (long IDs,
    e.g. 32 codes of 256, whose integer would overflow), which sort in the
    same order."""
    codes = np.asarray(codes)
    if math.prod(self.level_sizes) < 2**62:
      keys = np.zeros(codes.shape[:-1], np.int64)
      for level, size in enumerate(self.level_sizes):
        keys = keys * size + codes[..., level]
      return keys
    rows = np.ascontiguousarray(codes.astype('>u4'))
    return rows.view(np.dtype((np.void, 4 * codes.shape[-1])))[..., 0]

  def token_table(self) -> np.ndarray:
    """int32 [num_items + 1, L]: the tokens of every item id; row 0 is padding."""
    table = self.codes + self.level_offsets[None, :].astype(np.int32)
    table[0] = PAD_ID
    return table

  def items_to_tokens(self, item_ids: np.ndarray) -> np.ndarray:
    """[...] item ids -> [..., L] tokens (item 0 -> padding)."""
    return self.token_table()[np.asarray(item_ids)]

  def tokens_to_items(self, tokens: np.ndarray) -> np.ndarray:
    """[..., L] tokens -> [...] item ids, 0 where the tokens name no item.

    With collisions the first item (lowest id) that carries the code wins.
    """
    tokens = np.asarray(tokens)
    codes = tokens - self.level_offsets
    in_range = ((codes >= 0) & (codes < np.asarray(self.level_sizes))).all(-1)
    keys = self._keys(np.where(in_range[..., None], codes, 0))
    pos = np.searchsorted(self._sorted_keys, keys)
    pos = np.minimum(pos, self._sorted_keys.size - 1)
    found = in_range & (self._sorted_keys[pos] == keys)
    return np.where(found, self._sorted_items[pos], 0).astype(np.int32)

  # -- persistence -------------------------------------------------------------
  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, 'codes.npy'), self.codes)
    with open(os.path.join(directory, 'ids.json'), 'w') as f:
      json.dump({'level_sizes': list(self.level_sizes), 'scheme': self.scheme,
                 'num_items': self.num_items, 'info': self.info}, f, indent=1)
    if self.quantizer:
      np.savez(os.path.join(directory, QUANTIZER), **self.quantizer)

  @classmethod
  def load(cls, directory: str) -> 'ItemIds':
    meta_path = os.path.join(directory, 'ids.json')
    codes_path = os.path.join(directory, 'codes.npy')
    try:
      with open(meta_path) as f:
        meta = json.load(f)
      codes = np.load(codes_path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
      raise ValueError(f'Cannot read item identifiers from {directory} ({e}); delete the '
                       'folder to fit the identifiers again.') from e
    quantizer = None
    if os.path.exists(os.path.join(directory, QUANTIZER)):
      with np.load(os.path.join(directory, QUANTIZER)) as z:
        quantizer = {k: z[k] for k in z.files}
    ids = cls(codes=codes, level_sizes=tuple(meta['level_sizes']), scheme=meta['scheme'],
              info=meta.get('info', {}), quantizer=quantizer)
    if ids.num_items != meta['num_items']:
      raise ValueError(f'{codes_path} has {ids.num_items} items but {meta_path} says '
                       f'{meta["num_items"]}; delete the folder to fit them again.')
    return ids


def codebook_size_for(num_items: int, num_levels: int, requested: int = 0) -> int:
  """`requested`, or (if 0) the smallest k with k ** num_levels >= num_items.

  Raises:
    ValueError: when the codes cannot number every item.
  """
  if num_levels < 1:
    raise ValueError(f'num_levels must be >= 1, got {num_levels}.')
  k = requested
  if not k:
    k = max(1, math.ceil(num_items ** (1 / num_levels) - 1e-9))
    while k ** num_levels < num_items:
      k += 1
  if k ** num_levels < num_items:
    raise ValueError(f'{num_levels} levels of {k} codes give {k ** num_levels} identifiers, '
                     f'fewer than the {num_items} items; raise codebook_size.')
  return k


def keys_to_codes(keys: np.ndarray, k: int, num_levels: int) -> np.ndarray:
  """Distinct integers -> item-id-indexed codes: row i + 1 holds keys[i] in
  base k over num_levels digits, most significant first (row 0 is -1)."""
  codes = np.full((len(keys) + 1, num_levels), -1, np.int32)
  keys = np.asarray(keys, np.int64)
  for level in reversed(range(num_levels)):
    codes[1:, level] = keys % k
    keys = keys // k
  return codes


class IdScheme(abc.ABC):
  """Fits item identifiers on a data set (see `genrec.data.sequences.SequenceData`)."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """A short name that tells the scheme and its settings apart, for file names."""

  @abc.abstractmethod
  def fit(self, data) -> ItemIds:
    """Returns identifiers for items 1..data.num_items.

    A scheme may use the items' content and the *training* part of the
    sequences (never validation or test targets).
    """
