"""T5-style encoder-decoder that reads a history of item tokens and generates
the identifier tokens of the next item."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
import optax

from genrec import config_check, layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes of the encoder-decoder; gin files in gin/models/ set them.

  `vocab_size` is normally left at 0 and filled in from the identifier scheme.
  """
  vocab_size: int = 0
  d_model: int = 128
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 4
  num_decoder_layers: int = 4
  dropout_rate: float = 0.1
  activation: str = 'relu'
  gated_mlp: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  logits_via_embedding: bool = False
  dtype: str = 'float32'  # compute dtype: 'float32' or 'bfloat16'
  # 'encoder_decoder' (generative; with num_items > 0 it scores items through
  # a projection head instead of decoding identifiers) or 'sasrec'.
  architecture: str = 'encoder_decoder'
  num_items: int = 0  # item-scoring models: catalog size, filled in from the data
  max_len: int = 0  # SASRec: history positions, filled in from max_history

  def __post_init__(self):
    config_check.check_fields(self)
    for name in ('d_model', 'num_heads', 'head_dim', 'd_ff'):
      if getattr(self, name) <= 0:
        raise ValueError(f'TransformerConfig.{name} must be positive, not {getattr(self, name)}.')
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'TransformerConfig.dropout_rate must be in [0, 1), not '
                       f'{self.dropout_rate}.')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"TransformerConfig.dtype must be 'float32' or 'bfloat16', not "
                       f'{self.dtype!r}.')

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.attn_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.attn = layers.MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.head_dim,
                                          cfg.dropout_rate, dtype=dt, rngs=rngs)
    self.mlp_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.mlp = layers.MlpBlock(cfg.d_model, cfg.d_ff, cfg.activation, cfg.gated_mlp,
                               cfg.dropout_rate, dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def __call__(self, x, mask, bias, *, deterministic, rngs):
    kw = dict(deterministic=deterministic, rngs=rngs)
    h = self.attn_norm(x)
    x = x + self.dropout(self.attn(h, h, mask, bias, **kw), **kw)
    return x + self.dropout(self.mlp(self.mlp_norm(x), **kw), **kw)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    attn = lambda: layers.MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.head_dim,
                                             cfg.dropout_rate, dtype=dt, rngs=rngs)
    self.self_attn_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.self_attn = attn()
    self.cross_attn_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.cross_attn = attn()
    self.mlp_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.mlp = layers.MlpBlock(cfg.d_model, cfg.d_ff, cfg.activation, cfg.gated_mlp,
                               cfg.dropout_rate, dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def __call__(self, y, encoded, self_mask, cross_mask, bias, *, deterministic, rngs):
    kw = dict(deterministic=deterministic, rngs=rngs)
    h = self.self_attn_norm(y)
    y = y + self.dropout(self.self_attn(h, h, self_mask, bias, **kw), **kw)
    h = self.cross_attn_norm(y)
    y = y + self.dropout(self.cross_attn(h, encoded, cross_mask, None, **kw), **kw)
    return y + self.dropout(self.mlp(self.mlp_norm(y), **kw), **kw)


  def decode_step(self, y, cross_kv, cross_mask, self_kv, step: int, bias):
    """One position of incremental decoding (inference, no dropout).

    Args:
      y: [n, 1, d] the current token's embedding, n = batch * beams.
      cross_kv: keys/values of the encoder output [batch, s, h, dk] (shared by
        a query's beams, never repeated per beam).
      cross_mask: [batch, 1, 1, s].
      self_kv: cached self-attention keys/values [n, T, h, dk].
      step: the position (static).
      bias: the decoder's relative position bias [1, h, T, T].

    Returns:
      (y [n, 1, d], self_kv with position `step` filled in).
    """
    h = self.self_attn_norm(y)
    k_new, v_new = self.self_attn.keys_values(h)  # [n, 1, h, dk]
    k, v = (c.at[:, step].set(x[:, 0]) for c, x in zip(self_kv, (k_new, v_new)))
    visible = (jnp.arange(k.shape[1]) <= step)[None, None, None, :]  # [1, 1, 1, T]
    y = y + self.self_attn.attend(self.self_attn.queries(h), k, v, visible,
                                  bias[:, :, step:step + 1, :])
    h = self.cross_attn_norm(y)
    n, b = y.shape[0], cross_kv[0].shape[0]
    q = self.cross_attn.queries(h)  # [n, 1, h, dk]: a query's beams become its positions
    q = q.reshape(b, n // b, *q.shape[2:])
    y = y + self.cross_attn.attend(q, *cross_kv, cross_mask, None).reshape(y.shape)
    return y + self.mlp(self.mlp_norm(y), deterministic=True, rngs=None), (k, v)


class EncoderDecoder(nnx.Module):
  """Encoder over history tokens, causal decoder over identifier tokens.

  Token 0 is padding in the encoder input and the start token of the decoder
  input (decoder inputs are targets shifted right, as in T5).

  With `cfg.num_items > 0` it also has an item projection head (as in
  Lite-LLM4Rec): the decoder's state after the start token is scored against
  a learned embedding of every item, so one pass ranks the whole catalog
  (`score_items`) instead of a beam search over identifiers.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    if cfg.vocab_size <= 0:
      raise ValueError('TransformerConfig.vocab_size must be set (it normally comes '
                       'from the identifier scheme).')
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.embed = layers._param(rngs, nnx.initializers.normal(1.0),
                               (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    bias = lambda bidi: layers.RelativePositionBias(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidi, dtype=dt, rngs=rngs)
    self.encoder_bias = bias(True)
    self.decoder_bias = bias(False)
    self.encoder_layers = nnx.List(
        [EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.decoder_layers = nnx.List(
        [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)])
    self.encoder_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.decoder_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.logits_dense = None if cfg.logits_via_embedding else layers.Dense(
        (cfg.d_model,), (cfg.vocab_size,), ('embed', 'vocab'), dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)
    # Like the tied token logits: unit-variance rows, scores scaled by 1/sqrt(d).
    self.item_embed = _item_table(cfg, 1.0, rngs) if cfg.num_items > 0 else None

  def _embed(self, tokens: Array) -> Array:
    return jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.compute_dtype)

  def encode(self, encoder_input_tokens: Array, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
    """Returns (encoded [b, s, d], input mask [b, s])."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    valid = encoder_input_tokens > 0  # [b, s]
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # [b, 1, s, s]
    s = encoder_input_tokens.shape[1]
    bias = self.encoder_bias(s, s)
    x = self.dropout(self._embed(encoder_input_tokens), **kw)
    for layer in self.encoder_layers:
      x = layer(x, mask, bias, **kw)
    return self.dropout(self.encoder_norm(x), **kw), valid

  def decode(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array, *,
             deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """Returns float32 logits [b, t, vocab] for every decoder position."""
    return self._logits(self.decode_hidden(encoded, encoder_valid, decoder_input_tokens,
                                           deterministic=deterministic, rngs=rngs))

  def decode_hidden(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array,
                    *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """The decoder's final states [b, t, d] (normalized)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    t = decoder_input_tokens.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, t, t]
    cross_mask = encoder_valid[:, None, None, :]  # [b, 1, 1, s]
    bias = self.decoder_bias(t, t)
    y = self.dropout(self._embed(decoder_input_tokens), **kw)
    for layer in self.decoder_layers:
      y = layer(y, encoded, causal, cross_mask, bias, **kw)
    return self.dropout(self.decoder_norm(y), **kw)

  def _logits(self, y: Array) -> Array:
    if self.logits_dense is None:
      logits = jnp.einsum('btd,vd->btv', y, self.embed[...].astype(y.dtype))
      logits = logits / jnp.sqrt(self.cfg.d_model).astype(y.dtype)
    else:
      logits = self.logits_dense(y)
    return logits.astype(jnp.float32)

  # -- incremental decoding (inference) ----------------------------------------
  def cross_attention_cache(self, encoded: Array) -> list[tuple[Array, Array]]:
    """Per decoder layer, the keys/values of the encoder output [b, s, h, dk]."""
    return [layer.cross_attn.keys_values(encoded) for layer in self.decoder_layers]

  def init_self_cache(self, n: int, max_len: int) -> list[tuple[Array, Array]]:
    """Empty self-attention caches [n, max_len, h, dk] per decoder layer."""
    shape = (n, max_len, self.cfg.num_heads, self.cfg.head_dim)
    zeros = lambda: jnp.zeros(shape, self.cfg.compute_dtype)
    return [(zeros(), zeros()) for _ in self.decoder_layers]

  def decode_step(self, tokens: Array, step: int, cross_cache, encoder_valid: Array,
                  self_cache) -> tuple[Array, list]:
    """Next-token logits of n = batch * beams sequences, one position at a time.

    Args:
      tokens: int32 [n], the token at position `step` of the decoder input
        (0, the start token, at step 0).
      step: the position (static).
      cross_cache: `cross_attention_cache(encoded)`; batch = n / beams.
      encoder_valid: [batch, s].
      self_cache: from `init_self_cache` or the previous step.

    Returns:
      (float32 logits [n, vocab], the updated self cache). Equal to
      `decode(...)[:, step]` on the whole prefix (tested).
    """
    max_len = self_cache[0][0].shape[1]
    bias = self.decoder_bias(max_len, max_len)
    cross_mask = encoder_valid[:, None, None, :]
    y = self._embed(tokens[:, None])  # [n, 1, d]
    new_cache = []
    for layer, cross_kv, self_kv in zip(self.decoder_layers, cross_cache, self_cache):
      y, kv = layer.decode_step(y, cross_kv, cross_mask, self_kv, step, bias)
      new_cache.append(kv)
    return self._logits(self.decoder_norm(y))[:, 0], new_cache

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    encoded, valid = self.encode(encoder_input_tokens, deterministic=deterministic, rngs=rngs)
    return self.decode(encoded, valid, decoder_input_tokens,
                       deterministic=deterministic, rngs=rngs)

  def score_items(self, encoder_input_tokens: Array, *, deterministic: bool = True,
                  rngs: nnx.Rngs | None = None) -> Array:
    """Projection head: float32 scores [b, rows >= num_items + 1] of item ids (item 0
    and the padding rows never win)."""
    if self.item_embed is None:
      raise ValueError('This model has no item projection head (TransformerConfig.num_items '
                       "is 0); use train.train.head = 'projection'.")
    kw = dict(deterministic=deterministic, rngs=rngs)
    encoded, valid = self.encode(encoder_input_tokens, **kw)
    start = jnp.zeros((encoded.shape[0], 1), jnp.int32)
    h = self.decode_hidden(encoded, valid, start, **kw)[:, 0]  # [b, d]
    return _item_scores(h, self.item_embed[...], self.cfg.num_items,
                        1 / self.cfg.d_model ** 0.5)

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy of the identifier tokens (or, with a projection head,
    of the target item over the catalog) and accuracy."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    if self.item_embed is not None:
      return _item_loss(self.score_items(batch['encoder_input_tokens'], **kw),
                        batch['target_item'])
    logits = self(batch['encoder_input_tokens'], batch['decoder_input_tokens'], **kw)
    targets = batch['decoder_target_tokens']
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(weights.sum(), 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return (ce * weights).sum() / denom, {'accuracy': (correct * weights).sum() / denom}


def _item_table(cfg: TransformerConfig, stddev: float, rngs: nnx.Rngs) -> nnx.Param:
  """[rows, d] item embeddings, rows = num_items + 1 rounded up to a multiple of
  128 so that the table shards evenly; the extra rows are never scored."""
  rows = -(-(cfg.num_items + 1) // 128) * 128
  return layers._param(rngs, nnx.initializers.normal(stddev), (rows, cfg.d_model),
                       ('items', 'embed'))


def _item_scores(h: Array, table: Array, num_items: int, scale: float = 1.0) -> Array:
  """scale * [b, d] x [rows, d] -> float32 [b, rows]; only items 1..num_items can win."""
  scores = jnp.einsum('bd,nd->bn', h, table.astype(h.dtype)).astype(jnp.float32) * scale
  item = jnp.arange(table.shape[0])
  return jnp.where((item > 0) & (item <= num_items), scores, jnp.finfo(jnp.float32).min)


def _item_loss(scores: Array, target_item: Array) -> tuple[Array, dict[str, Array]]:
  ce = optax.softmax_cross_entropy_with_integer_labels(scores, target_item)
  accuracy = (scores.argmax(-1) == target_item).astype(jnp.float32).mean()
  return ce.mean(), {'accuracy': accuracy}


class SASRec(nnx.Module):
  """Self-attentive sequential recommendation (Kang & McAuley, 2018) in the same
  framework: a causal Transformer over item-id embeddings plus learned
  positions; the last history position is scored against every item's
  (shared input/output) embedding, trained with full-catalog cross-entropy.

  Inputs are item ids [b, max_len], 0-padded at the end, oldest first.
  Sizes: d_model, num_heads, head_dim, d_ff, num_encoder_layers (blocks),
  dropout_rate, max_len, num_items.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    if cfg.num_items <= 0 or cfg.max_len <= 0:
      raise ValueError('SASRec needs TransformerConfig.num_items and max_len (filled in '
                       'by train.train from the data and max_history).')
    dt = cfg.compute_dtype
    self.cfg = cfg
    # As in SASRec: small item embeddings, scaled by sqrt(d) on input, and raw
    # dot products as scores (unit-variance rows learn far slower here).
    self.item_embed = _item_table(cfg, 0.02, rngs)
    self.pos_embed = layers._param(rngs, nnx.initializers.normal(0.02),
                                   (cfg.max_len, cfg.d_model), ('length', 'embed'))
    self.blocks = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def score_items(self, items: Array, *, deterministic: bool = True,
                  rngs: nnx.Rngs | None = None) -> Array:
    """[b, max_len] history item ids -> float32 scores [b, rows] of item ids."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    b, t = items.shape
    valid = items > 0
    x = (jnp.take(self.item_embed[...], items, axis=0) * jnp.sqrt(self.cfg.d_model)
         + self.pos_embed[...][None, :t])
    x = self.dropout(x.astype(self.cfg.compute_dtype), **kw)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    for block in self.blocks:
      x = block(x, mask, None, **kw)
    x = self.norm(x)
    last = jnp.maximum(valid.sum(axis=1) - 1, 0)  # [b]: the most recent item
    return _item_scores(x[jnp.arange(b), last], self.item_embed[...], self.cfg.num_items)

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    return _item_loss(self.score_items(batch['encoder_input_tokens'],
                                       deterministic=deterministic, rngs=rngs),
                      batch['target_item'])


def model_class(cfg: TransformerConfig) -> type[nnx.Module]:
  classes = {'encoder_decoder': EncoderDecoder, 'sasrec': SASRec}
  if cfg.architecture not in classes:
    raise ValueError(f'Unknown architecture {cfg.architecture!r}; use one of {sorted(classes)}.')
  return classes[cfg.architecture]


# For functions compiled to run once (parameter init): XLA's backend otherwise
# spends seconds per random op (the threefry rounds of every parameter).
ONE_SHOT_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0,
                            'xla_llvm_disable_expensive_passes': True}


def init_params(cfg: TransformerConfig, rng: jax.Array) -> dict:
  """Fresh parameters as a pure dict (traceable: jit it with out_shardings)."""
  with nnx.use_eager_sharding(False):
    return nnx.to_pure_dict(nnx.state(model_class(cfg)(cfg, rngs=nnx.Rngs(params=rng))))


def create_model(cfg: TransformerConfig, rng: jax.Array) -> nnx.Module:
  """A ready model on the default device (for inference, tests, notebooks)."""
  graphdef, _ = nnx.split(abstract_model(cfg))
  init = jax.jit(init_params, static_argnums=0).lower(cfg, rng).compile(
      compiler_options=ONE_SHOT_COMPILE_OPTIONS)
  return nnx.merge(graphdef, init(rng))


def abstract_model(cfg: TransformerConfig) -> nnx.Module:
  """The model with ShapeDtypeStructs instead of arrays (no memory, no compute)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: model_class(cfg)(cfg, rngs=nnx.Rngs(params=0)))
