"""Flax NNX building blocks of the T5-style encoder-decoder.

Every parameter is created through `_param`, which attaches its logical axis
names (see `genrec.partitioning.LOGICAL_AXIS_RULES`). Compute runs in `dtype`
(e.g. bfloat16); parameters are stored in float32.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def _param(rngs: nnx.Rngs, init, shape, axes, dtype=jnp.float32) -> nnx.Param:
  return nnx.Param(
      nnx.with_partitioning(init, axes)(rngs.params(), shape, dtype))


class Dense(nnx.Module):
  """y = x . W over the last `len(in_shape)` axes of x; no bias (as T5)."""

  def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               axes: tuple[str, ...], *, dtype, rngs: nnx.Rngs):
    n_in = len(in_shape)
    init = nnx.initializers.variance_scaling(
        1.0, 'fan_in', 'truncated_normal', in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + len(out_shape))))
    self.kernel = _param(rngs, init, in_shape + out_shape, axes)
    self.n_in = len(in_shape)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    k = self.kernel[...].astype(self.dtype)
    contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    return jax.lax.dot_general(x.astype(self.dtype), k, (contract, ((), ())))


def _mix32(x: Array) -> Array:
  """A 32-bit integer finalizer with full avalanche (Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 [shape] pseudo-random bits from a JAX PRNG key: a counter-based hash
  of (key, element index).

  Two rounds of `_mix32` over the global element index, keyed by the key's
  words. Unlike `jax.random.bits` (threefry: 20 rounds over two words, which
  XLA runs as a loop that nothing fuses into), this is a handful of integer
  ops that fuse into the consumer (the dropout select), so dropout costs about
  what the multiply costs. Deterministic in (key, shape) and independent of
  the device mesh (the index is the logical one), so runs stay reproducible
  and resumable. Good enough for dropout masks; not for anything
  cryptographic or for sampling.
  """
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError(f'hash_bits: {shape} has {size} elements, more than 2**32.')
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  k0 = words[0]
  k1 = words[1] if words.shape[0] > 1 else _mix32(k0 + jnp.uint32(0x9E3779B9))
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return _mix32(_mix32(index ^ k0) + k1)


class Dropout(nnx.Module):
  """Inverted dropout with `hash_bits` masks (see there for why not threefry).

  Drops each element with probability `rate` and scales the rest by
  1 / (1 - rate); one key from `rngs.dropout()` per call, as `nnx.Dropout`.
  """

  def __init__(self, rate: float):
    if not 0 <= rate < 1:
      raise ValueError(f'Dropout rate must be in [0, 1), not {rate}.')
    self.rate = rate

  def __call__(self, x: Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> Array:
    if deterministic or self.rate == 0:
      return x
    if rngs is None:
      raise ValueError('Dropout in training needs rngs with a "dropout" stream.')
    threshold = jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    keep = hash_bits(rngs.dropout(), x.shape) >= threshold
    return jnp.where(keep, x / jnp.asarray(1 - self.rate, x.dtype), jnp.zeros((), x.dtype))


class RMSNorm(nnx.Module):
  """T5 layer norm: scale only, no mean subtraction, statistics in float32."""

  def __init__(self, dim: int, *, dtype, eps: float = 1e-6, rngs: nnx.Rngs):
    self.scale = _param(rngs, nnx.initializers.ones, (dim,), ('embed',))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(self.dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """T5's log-spaced buckets of (key position - query position)."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps) /
      math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nnx.Module):
  """Learned per-head scalar bias per relative-position bucket (shared by a stack)."""

  def __init__(self, num_buckets: int, max_distance: int, num_heads: int,
               bidirectional: bool, *, dtype, rngs: nnx.Rngs):
    self.embedding = _param(rngs, nnx.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                            (num_buckets, num_heads), ('relpos_buckets', 'heads'))
    self.num_buckets = num_buckets
    self.max_distance = max_distance
    self.bidirectional = bidirectional
    self.dtype = dtype

  def __call__(self, q_len: int, k_len: int) -> Array:
    rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]  # [q, k]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(self.embedding[...], buckets, axis=0)  # [q, k, heads]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(self.dtype)  # [1, heads, q, k]


@jax.custom_vjp
def add_shared_bias(logits: Array, bias: Array) -> Array:
  """logits [b, ...] + bias [1, ...] (one bias shared by the batch).

  The same sum, with the bias gradient (a sum over the batch) computed as a
  [b] x [b, n] matrix product: XLA:CPU reduces over a leading axis with
  trailing axes kept about 80x slower than it multiplies (100 ms vs 1.2 ms for
  the relative position bias of one TIGER step at batch 64).
  """
  return logits + bias


def _add_shared_bias_fwd(logits, bias):
  return logits + bias, None


def _add_shared_bias_bwd(_, g):
  batch = g.shape[0]
  dbias = jnp.dot(jnp.ones((batch,), g.dtype), g.reshape(batch, -1))
  return g, dbias.reshape(1, *g.shape[1:])


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


class MultiHeadAttention(nnx.Module):
  """Multi-head dot-product attention, queries scaled by 1/sqrt(head_dim)."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, dropout_rate: float,
               *, dtype, rngs: nnx.Rngs):
    proj = lambda: Dense((d_model,), (num_heads, head_dim), ('embed', 'heads', 'kv'),
                         dtype=dtype, rngs=rngs)
    self.query, self.key, self.value = proj(), proj(), proj()
    self.out = Dense((num_heads, head_dim), (d_model,), ('heads', 'kv', 'embed'),
                     dtype=dtype, rngs=rngs)
    self.dropout = Dropout(dropout_rate)
    self.head_dim = head_dim
    self.dtype = dtype

  def __call__(self, x_q: Array, x_kv: Array, mask: Array | None, bias: Array | None,
               *, deterministic: bool, rngs: nnx.Rngs | None) -> Array:
    return self.attend(self.queries(x_q), *self.keys_values(x_kv), mask, bias,
                       deterministic=deterministic, rngs=rngs)

  def queries(self, x: Array) -> Array:
    """[b, q, d_model] -> scaled queries [b, q, h, d]."""
    return self.query(x) / jnp.sqrt(self.head_dim).astype(self.dtype)

  def keys_values(self, x: Array) -> tuple[Array, Array]:
    """[b, k, d_model] -> keys, values [b, k, h, d] (what a decoding cache holds)."""
    return self.key(x), self.value(x)

  def attend(self, q: Array, k: Array, v: Array, mask: Array | None, bias: Array | None,
             *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """Scaled queries [b, q, h, d] over keys/values [b, k, h, d] -> [b, q, d_model].

    The products run head-major ([b, h, ., d]): XLA:CPU's batched matmuls over
    [b, q, h, d] operands took 20% longer per attention layer (forward and
    backward, TIGER shapes) than with the transposes made explicit."""
    head_major = lambda a: jnp.transpose(a, (0, 2, 1, 3))
    logits = jnp.einsum('bhqd,bhkd->bhqk', head_major(q), head_major(k)).astype(jnp.float32)
    if bias is not None:
      bias = bias.astype(jnp.float32)  # the same dtype as the logits (custom_vjp)
      if bias.shape[0] == 1 and bias.shape[1:] == logits.shape[1:]:
        logits = add_shared_bias(logits, bias)
      else:
        logits = logits + bias
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = self.dropout(weights, deterministic=deterministic, rngs=rngs)
    y = jnp.einsum('bhqk,bhkd->bhqd', weights, head_major(v))
    return self.out(head_major(y))


class MlpBlock(nnx.Module):
  """Position-wise feed-forward; `gated` gives T5.1.1's GeGLU."""

  def __init__(self, d_model: int, d_ff: int, activation: str, gated: bool,
               dropout_rate: float, *, dtype, rngs: nnx.Rngs):
    self.wi = Dense((d_model,), (d_ff,), ('embed', 'mlp'), dtype=dtype, rngs=rngs)
    self.wi_gate = (Dense((d_model,), (d_ff,), ('embed', 'mlp'), dtype=dtype, rngs=rngs)
                    if gated else None)
    self.wo = Dense((d_ff,), (d_model,), ('mlp', 'embed'), dtype=dtype, rngs=rngs)
    self.activation = getattr(jax.nn, activation)
    self.dropout = Dropout(dropout_rate)

  def __call__(self, x: Array, *, deterministic: bool, rngs: nnx.Rngs | None) -> Array:
    h = self.activation(self.wi(x))
    if self.wi_gate is not None:
      h = h * self.wi_gate(x)
    h = self.dropout(h, deterministic=deterministic, rngs=rngs)
    return self.wo(h)
