"""Exact prefix-trie constraints for beam search, as arrays on the device.

The valid identifiers (one code per level, see `genrec.ids`) form a trie.
Level l's nodes are the distinct code prefixes of length l, numbered in
lexicographic order. Each level is stored as two tables:

  bits[l]  uint32 [N_l, ceil(K_l / 32)]  bit c of a row: code c extends the node
  rank[l]  int32  [N_l, ceil(K_l / 32)]  index (at level l + 1) of the node's
                                         first child whose code is in that word

so the allowed codes of every beam are one row gather, and the child reached
by code c is `rank[l][node, c // 32] + popcount(bits[l][node, c // 32] &
((1 << c % 32) - 1))`: a gather and a popcount, no search and no Python loop.
Memory is about N_l * K_l / 4 bytes per level (reported by `memory_bytes`).

`PrefixTrie.constrain` is a `decoding.ConstrainFn`; the trie is a pytree, so
it is passed to jitted functions as an argument rather than baked in as a
constant.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from genrec.ids import ItemIds


@flax.struct.dataclass
class PrefixTrie:
  bits: tuple[jax.Array, ...]
  rank: tuple[jax.Array, ...]
  level_sizes: tuple[int, ...] = flax.struct.field(pytree_node=False)
  level_offsets: tuple[int, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_levels(self) -> int:
    return len(self.level_sizes)

  @classmethod
  def from_codes(cls, codes: np.ndarray, level_sizes, level_offsets) -> 'PrefixTrie':
    """Builds the trie of the rows of `codes` int [n, L] (code c < level_sizes[l]).

    Token of code c at level l = level_offsets[l] + c.
    """
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes) or not len(codes):
      raise ValueError(f'codes must be [n > 0, {len(level_sizes)}], got {codes.shape}')
    sizes = np.asarray(level_sizes, np.int64)
    if (codes < 0).any() or (codes >= sizes).any():
      raise ValueError('every code must lie in [0, level size)')
    codes = np.unique(codes, axis=0)  # lexicographic order, duplicates dropped
    bits, rank = [], []
    # parent[i]: index of row i's prefix of length l among distinct l-prefixes.
    parent = np.zeros(len(codes), np.int64)
    num_nodes = 1
    for l, k in enumerate(level_sizes):
      words = -(-k // 32)
      # Distinct (l+1)-prefixes are runs of equal (parent, code) in sorted order.
      key = parent * k + codes[:, l]
      first = np.r_[True, key[1:] != key[:-1]]
      child_parent, child_code = parent[first], codes[first, l]
      b = np.zeros((num_nodes, words), np.uint32)
      np.bitwise_or.at(b, (child_parent, child_code // 32),
                       (np.uint32(1) << (child_code % 32).astype(np.uint32)))
      counts = np.zeros((num_nodes, words), np.int64)
      np.add.at(counts, (child_parent, child_code // 32), 1)
      r = (np.cumsum(counts.reshape(-1)) - counts.reshape(-1)).reshape(num_nodes, words)
      bits.append(jnp.asarray(b))
      rank.append(jnp.asarray(r.astype(np.int32)))
      parent = np.cumsum(first) - 1
      num_nodes = int(first.sum())
    return cls(bits=tuple(bits), rank=tuple(rank), level_sizes=tuple(int(k) for k in level_sizes),
               level_offsets=tuple(int(o) for o in level_offsets))

  @classmethod
  def from_ids(cls, ids: ItemIds) -> 'PrefixTrie':
    """The trie of every item's identifier (item 0, padding, excluded)."""
    return cls.from_codes(ids.codes[1:], ids.level_sizes, ids.level_offsets)

  def memory_bytes(self) -> int:
    return sum(x.size * x.dtype.itemsize for x in (*self.bits, *self.rank))

  def num_nodes(self) -> list[int]:
    return [x.shape[0] for x in self.bits]

  # -- on device ----------------------------------------------------------------
  def child(self, node: jax.Array, level: int, code: jax.Array) -> jax.Array:
    """Node at level + 1 reached from `node` by `code` (which must be allowed)."""
    word, bit = code // 32, (code % 32).astype(jnp.uint32)
    w = self.bits[level][node, word]
    below = w & ((jnp.uint32(1) << bit) - jnp.uint32(1))
    return self.rank[level][node, word] + jax.lax.population_count(below).astype(jnp.int32)

  def allowed(self, node: jax.Array, level: int) -> jax.Array:
    """bool [..., K_level]: the codes that extend `node` (int [...]) at `level`."""
    k = self.level_sizes[level]
    # Level 0 has one node (the root): gather its row once and broadcast.
    row = self.bits[0][0] if level == 0 else self.bits[level][node]  # [..., words]
    codes = jnp.arange(k)
    mask = (row[..., codes // 32] >> (codes % 32).astype(jnp.uint32)) & jnp.uint32(1)
    return jnp.broadcast_to(mask.astype(bool), (*node.shape, k))

  def node_of(self, seqs: jax.Array, length: int) -> jax.Array:
    """Nodes of the first `length` tokens of `seqs` int32 [..., >= length]."""
    node = jnp.zeros(seqs.shape[:-1], jnp.int32)
    for l in range(length):
      code = jnp.clip(seqs[..., l] - self.level_offsets[l], 0, self.level_sizes[l] - 1)
      node = self.child(node, l, code)
    return node

  def constrain(self, seqs: jax.Array, step: int, log_probs: jax.Array) -> jax.Array:
    """`decoding.ConstrainFn`: only tokens that extend a valid identifier.

    seqs int32 [batch, beam, L], log_probs [batch, beam, vocab].
    """
    if step >= self.num_levels:
      raise ValueError(f'step {step} is past the identifier length {self.num_levels}')
    allowed = self.allowed(self.node_of(seqs, step), step)  # [batch, beam, K_step]
    vocab, off, k = log_probs.shape[-1], self.level_offsets[step], self.level_sizes[step]
    mask = jnp.pad(allowed, [(0, 0)] * (allowed.ndim - 1) + [(off, vocab - off - k)])
    return jnp.where(mask, log_probs, -jnp.inf)


def leaf_items(ids: ItemIds) -> np.ndarray:
  """int32 [leaves]: the item id of every leaf of `PrefixTrie.from_ids(ids)`
  (leaves are the distinct identifiers in lexicographic order; with
  collisions the lowest item id, as `ItemIds.tokens_to_items`)."""
  _, first = np.unique(ids.codes[1:], axis=0, return_index=True)
  return (first + 1).astype(np.int32)


def trie_tokens_to_items(trie: PrefixTrie, leaf_item: jax.Array,
                         tokens: jax.Array) -> jax.Array:
  """Device `ItemIds.tokens_to_items`: walks the prefix trie; 0 where the
  tokens [..., L] are not an identifier."""
  node = jnp.zeros(tokens.shape[:-1], jnp.int32)
  ok = jnp.ones(tokens.shape[:-1], bool)
  for level in range(trie.num_levels):
    code = tokens[..., level] - trie.level_offsets[level]
    ok &= (code >= 0) & (code < trie.level_sizes[level])
    code = jnp.clip(code, 0, trie.level_sizes[level] - 1)
    word = trie.bits[level][node, code // 32]
    ok &= ((word >> (code % 32).astype(jnp.uint32)) & jnp.uint32(1)).astype(bool)
    node = jnp.where(ok, trie.child(node, level, code), 0)
  return jnp.where(ok, leaf_item[jnp.clip(node, 0, leaf_item.shape[0] - 1)], 0)
