"""The models: Flax NNX modules, the config dataclass of each, and the model
classes gin binds (`MODEL = @models.EncoderDecoderModel()`), which own a
config and the conversion of data into the module's inputs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import optax

from genrec import config_check, layers, text_encoder
from genrec.data import sequences, windows
from genrec.ids import ItemIds
from genrec.ids.base import NUM_RESERVED_TOKENS

Array = jax.Array


def check_config(cfg, positive: tuple[str, ...]) -> None:
  """The checks every model config shares: field types, the `positive`
  sizes, the dropout rate and the compute dtype."""
  config_check.check_fields(cfg)
  name = type(cfg).__name__
  for field in positive:
    if getattr(cfg, field) <= 0:
      raise ValueError(f'{name}.{field} must be positive, not {getattr(cfg, field)}.')
  if not 0 <= cfg.dropout_rate < 1:
    raise ValueError(f'{name}.dropout_rate must be in [0, 1), not {cfg.dropout_rate}.')
  if cfg.dtype not in ('float32', 'bfloat16', 'auto'):
    raise ValueError(f"{name}.dtype must be 'float32', 'bfloat16' or 'auto', not "
                     f'{cfg.dtype!r}.')


class ConfigBase:
  """What every model config dataclass shares (mixed into frozen dataclasses).

  A config holds only its model's fields: sizes a gin file sets, and the
  sizes the training run fills in from the data (`Model.resolve`).
  """
  POSITIVE: tuple[str, ...] = ('d_model', 'num_heads', 'head_dim', 'd_ff')
  scores_items: bool = False  # ranks the catalog in one pass (`score_items`)

  def __post_init__(self):
    check_config(self, self.POSITIVE)

  @classmethod
  def from_json(cls, fields: dict):
    """A config saved as JSON (`dataclasses.asdict`; lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

  @property
  def compute_dtype(self):
    """'auto' is bfloat16 on GPUs and TPUs, float32 on CPUs (XLA:CPU has no
    fast bfloat16 matmul on most CPUs). Parameters, softmax statistics, norms
    and logits stay float32 whatever it is."""
    if self.dtype == 'auto':
      return jnp.dtype(jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16)
    return jnp.dtype(self.dtype)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(ConfigBase):
  """The T5-style encoder-decoder (TIGER); gin/models/*.gin set the sizes.

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
  dtype: str = 'auto'


@dataclasses.dataclass(frozen=True)
class ProjectionConfig(EncoderDecoderConfig):
  """The encoder-decoder with an item projection head (Lite-LLM4Rec):
  `num_items`, the catalog size, is filled in from the data."""
  num_items: int = 0
  scores_items = True


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig(ConfigBase):
  """One causal stack of `num_layers` blocks over the identifier tokens."""
  vocab_size: int = 0
  d_model: int = 128
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  num_layers: int = 8
  dropout_rate: float = 0.1
  activation: str = 'relu'
  gated_mlp: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  logits_via_embedding: bool = False
  dtype: str = 'auto'


@dataclasses.dataclass(frozen=True)
class SASRecConfig(ConfigBase):
  """SASRec's sizes (defaults: the paper's, gin/models/sasrec.gin).

  Attributes:
    num_items: catalog size, filled in from the data.
    max_len: history positions, filled in from max_history.
    positions_from_end: number positions back from the most recent item (it
      always sits at max_len - 1, as in the paper's left-padded sequences)
      instead of forward from the oldest item of the window.
  """
  d_model: int = 64
  num_heads: int = 2
  head_dim: int = 32
  d_ff: int = 256
  num_layers: int = 2
  dropout_rate: float = 0.5
  activation: str = 'gelu'
  gated_mlp: bool = False
  dtype: str = 'auto'
  num_items: int = 0
  max_len: int = 0
  positions_from_end: bool = False
  scores_items = True


@dataclasses.dataclass(frozen=True)
class BertEncoderDecoderConfig(ConfigBase):
  """A pretrained BERT encoder under genrec's decoder (document retrieval).

  `encoder_checkpoint`: the sentence-transformers folder whose BERT is the
  encoder ('' = the installed all-MiniLM-L6-v2, `text_encoder`); `d_model`
  must equal its hidden size.
  """
  vocab_size: int = 0
  d_model: int = 384
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1536
  num_decoder_layers: int = 1
  dropout_rate: float = 0.1
  activation: str = 'relu'
  gated_mlp: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: str = 'auto'
  encoder_checkpoint: str = ''


@dataclasses.dataclass(frozen=True)
class TransformerConfig(EncoderDecoderConfig):
  """The config of run records written before the model classes: the
  encoder-decoder's fields plus the other models' (`architecture` chose one).

  Kept so that such records load and resume (`config_from_json`,
  `legacy_settings`, `model_for`): `to_model_config` maps it to the config
  class of its model, which is what builds the module. It builds no model
  itself (`Model` refuses it); new code binds a model class
  (`MODEL = @models.EncoderDecoderModel()`).
  """
  # 'encoder_decoder' (with num_items > 0: the projection head),
  # 'decoder_only', 'sasrec' or 'bert_encoder_decoder'.
  architecture: str = 'encoder_decoder'
  num_items: int = 0
  max_len: int = 0
  positions_from_end: bool = False
  encoder_checkpoint: str = ''

  @property
  def scores_items(self) -> bool:
    return self.to_model_config().scores_items

  def to_model_config(self) -> ConfigBase:
    """The config of the model this record describes (`_LEGACY_ARCHITECTURES`)."""
    if self.architecture not in _LEGACY_ARCHITECTURES:
      raise ValueError(f'Unknown architecture {self.architecture!r}; use one of '
                       f'{sorted(_LEGACY_ARCHITECTURES)}.')
    cls, renamed = _LEGACY_ARCHITECTURES[self.architecture]
    if cls is EncoderDecoderConfig and self.num_items > 0:
      cls = ProjectionConfig
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
    fields.update({new: fn(self) for new, fn in renamed.items()})
    return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})


# TransformerConfig.architecture -> (the config class, its fields that the
# union config named otherwise: name -> value from the union config).
_LEGACY_ARCHITECTURES = {
    'encoder_decoder': (EncoderDecoderConfig, {}),
    'decoder_only': (DecoderOnlyConfig,
                     {'num_layers': lambda c: c.num_encoder_layers + c.num_decoder_layers}),
    'sasrec': (SASRecConfig, {'num_layers': lambda c: c.num_encoder_layers}),
    'bert_encoder_decoder': (BertEncoderDecoderConfig, {}),
}


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: ConfigBase, *, rngs: nnx.Rngs):
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

  def __init__(self, cfg: ConfigBase, *, rngs: nnx.Rngs):
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
      step: the position (a Python int, or a traced int32 scalar).
      bias: the decoder's relative position bias [1, h, T, T].

    Returns:
      (y [n, 1, d], self_kv with position `step` filled in).
    """
    h = self.self_attn_norm(y)
    k_new, v_new = self.self_attn.keys_values(h)  # [n, 1, h, dk]
    k, v = (c.at[:, step].set(x[:, 0]) for c, x in zip(self_kv, (k_new, v_new)))
    visible = (jnp.arange(k.shape[1]) <= step)[None, None, None, :]  # [1, 1, 1, T]
    y = y + self.self_attn.attend(self.self_attn.queries(h), k, v, visible,
                                  jax.lax.dynamic_slice_in_dim(bias, step, 1, axis=2))
    h = self.cross_attn_norm(y)
    n, b = y.shape[0], cross_kv[0].shape[0]
    q = self.cross_attn.queries(h)  # [n, 1, h, dk]: a query's beams become its positions
    q = q.reshape(b, n // b, *q.shape[2:])
    y = y + self.cross_attn.attend(q, *cross_kv, cross_mask, None).reshape(y.shape)
    return y + self.mlp(self.mlp_norm(y), deterministic=True, rngs=None), (k, v)


# The module protocol (what `Trainer` and `Predictor` rely on):
#   loss(batch, *, deterministic, rngs) -> (scalar loss, {metric: scalar})
#   generative modules: beam_search_inputs(inputs, beam_size, num_steps) ->
#     (tokens_to_logits, cache) for `decoding.beam_search`
#   item-scoring modules (config.scores_items): score_items(inputs[, catalog])
#     -> scores
# Which module a config builds, and how data becomes its inputs, is the
# model class's (`Model`, at the end of this file).


class EncoderDecoder(nnx.Module):
  """Encoder over history tokens, causal decoder over identifier tokens.

  Token 0 is padding in the encoder input and the start token of the decoder
  input (decoder inputs are targets shifted right, as in T5).
  """

  def __init__(self, cfg: EncoderDecoderConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.embed = _token_table(cfg, rngs)
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

  def _embed(self, tokens: Array) -> Array:
    return jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.compute_dtype)

  def encode(self, encoder_input_tokens: Array, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None, segment_ids: Array | None = None
             ) -> tuple[Array, Array]:
    """Returns (encoded [b, s, d], input mask [b, s]).

    With `segment_ids` [b, s] (packed rows, `features.pack_prefix_arrays`), a
    token attends only to the tokens of its own segment."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    valid = encoder_input_tokens > 0  # [b, s]
    mask = valid[:, None, None, :] & valid[:, None, :, None]  # [b, 1, s, s]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
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
                    *, deterministic: bool = True, rngs: nnx.Rngs | None = None,
                    segment_ids: tuple[Array, Array] | None = None) -> Array:
    """The decoder's final states [b, t, d] (normalized).

    With `segment_ids` = (encoder [b, s], decoder [b, t]) of packed rows, a
    decoder token attends to the earlier tokens and the encoder tokens of its
    own segment only."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    t = decoder_input_tokens.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, t, t]
    cross_mask = encoder_valid[:, None, None, :]  # [b, 1, 1, s]
    if segment_ids is not None:
      enc_seg, dec_seg = segment_ids
      causal = causal & (dec_seg[:, None, :, None] == dec_seg[:, None, None, :])
      cross_mask = cross_mask & (dec_seg[:, None, :, None] == enc_seg[:, None, None, :])
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

  def decoding_context(self, encoded: Array, encoder_valid: Array):
    """What `decode_step` reads of the encoder's output, computed once per
    query: here the cross-attention keys/values (`cross_attention_cache`)."""
    del encoder_valid
    return self.cross_attention_cache(encoded)

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
      step: the position (a Python int, or a traced int32 scalar: one
        compiled step serves every position).
      cross_cache: `decoding_context(encoded, encoder_valid)`; batch = n / beams.
      encoder_valid: [batch, s].
      self_cache: from `init_self_cache` or the previous step.

    Returns:
      (float32 logits [n, vocab], the updated self cache). Equal to
      `decode(...)[:, step]` on the whole prefix (tested).
    """
    y, new_cache = self.decode_step_hidden(tokens, step, cross_cache, encoder_valid,
                                           self_cache)
    return self._logits(y)[:, 0], new_cache

  def decode_step_hidden(self, tokens: Array, step: int, cross_cache, encoder_valid: Array,
                         self_cache) -> tuple[Array, list]:
    """`decode_step`'s final states [n, 1, d] (normalized) instead of logits."""
    max_len = self_cache[0][0].shape[1]
    bias = self.decoder_bias(max_len, max_len)
    cross_mask = encoder_valid[:, None, None, :]
    y = self._embed(tokens[:, None])  # [n, 1, d]
    new_cache = []
    for layer, cross_kv, self_kv in zip(self.decoder_layers, cross_cache, self_cache):
      y, kv = layer.decode_step(y, cross_kv, cross_mask, self_kv, step, bias)
      new_cache.append(kv)
    return self.decoder_norm(y), new_cache

  def beam_search_inputs(self, encoder_input_tokens: Array, beam_size: int, num_steps: int):
    """(tokens_to_logits, initial cache) of `decoding.beam_search`: the encoder
    runs once per query and its cross-attention keys/values are shared by the
    query's beams."""
    encoded, valid = self.encode(encoder_input_tokens)
    context = self.decoding_context(encoded, valid)

    def tokens_to_logits(tokens, cache, step):
      return self.decode_step(tokens, step, context, valid, cache)
    return tokens_to_logits, self.init_self_cache(encoded.shape[0] * beam_size, num_steps)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    encoded, valid = self.encode(encoder_input_tokens, deterministic=deterministic, rngs=rngs)
    return self.decode(encoded, valid, decoder_input_tokens,
                       deterministic=deterministic, rngs=rngs)

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy of the identifier tokens and accuracy."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    if 'encoder_segment_ids' in batch:  # packed rows (features.pack_prefix_arrays)
      segments = (batch['encoder_segment_ids'], batch['decoder_segment_ids'])
      encoded, valid = self.encode(batch['encoder_input_tokens'], segment_ids=segments[0], **kw)
      logits = self._logits(self.decode_hidden(encoded, valid, batch['decoder_input_tokens'],
                                               segment_ids=segments, **kw))
    else:
      logits = self(batch['encoder_input_tokens'], batch['decoder_input_tokens'], **kw)
    targets = batch['decoder_target_tokens']
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(weights.sum(), 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return (ce * weights).sum() / denom, {'accuracy': (correct * weights).sum() / denom}


class ProjectionEncoderDecoder(EncoderDecoder):
  """The encoder-decoder with an item projection head (as in Lite-LLM4Rec):
  the decoder's state after the start token is scored against a learned
  embedding of every item, so one pass ranks the whole catalog
  (`score_items`) instead of a beam search over identifiers."""

  def __init__(self, cfg: ProjectionConfig, *, rngs: nnx.Rngs):
    if cfg.num_items <= 0:
      raise ValueError('ProjectionConfig.num_items must be set (the training run fills it in '
                       'from the data).')
    super().__init__(cfg, rngs=rngs)
    # Like the tied token logits: unit-variance rows, scores scaled by 1/sqrt(d).
    self.item_embed = _item_table(cfg, 1.0, rngs)

  def score_items(self, encoder_input_tokens: Array, *, deterministic: bool = True,
                  rngs: nnx.Rngs | None = None) -> Array:
    """Float32 scores [b, rows >= num_items + 1] of item ids (item 0 and the
    padding rows never win)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    encoded, valid = self.encode(encoder_input_tokens, **kw)
    start = jnp.zeros((encoded.shape[0], 1), jnp.int32)
    h = self.decode_hidden(encoded, valid, start, **kw)[:, 0]  # [b, d]
    return _item_scores(h, self.item_embed[...], self.cfg.num_items,
                        1 / self.cfg.d_model ** 0.5)

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of the target item over the catalog and accuracy."""
    return _item_loss(self.score_items(batch['encoder_input_tokens'],
                                       deterministic=deterministic, rngs=rngs),
                      batch['target_item'])


class BertEncoderDecoder(EncoderDecoder):
  """A pretrained BERT encoder (all-MiniLM-L6-v2 by default) under genrec's
  decoder, for document retrieval from WordPiece inputs.

  Inputs are WordPiece ids without special tokens (0 = padding); the model
  adds [CLS] and [SEP] as the checkpoint was trained with. The decoder has
  its own token table (`vocab_size`: identifier tokens), tied to the logits.
  Every position's logits are

      logit_scale * (q + out(decoder state)) . embed[token]

  where q is the encoder's mean-pooled, normalized sentence embedding and
  `out` starts at zero: with the encoder's weights loaded
  (`text_encoder.pretrained_params`) and a docid's embedding set to its
  document's sentence embedding, the first decoding step starts as the
  checkpoint's dense retrieval (cosine similarity), and training moves on
  from there (tested). `d_model` must equal the checkpoint's hidden size.
  """

  def __init__(self, cfg: BertEncoderDecoderConfig, *, rngs: nnx.Rngs):
    bert_cfg = text_encoder.load_bert_config(cfg.encoder_checkpoint or None)
    if cfg.d_model != bert_cfg.hidden_size:
      raise ValueError(f'{type(cfg).__name__}.d_model is {cfg.d_model}, the encoder '
                       f'checkpoint has hidden size {bert_cfg.hidden_size}: set d_model = '
                       f'{bert_cfg.hidden_size}.')
    vocab = text_encoder.WordPieceVocabulary(cfg.encoder_checkpoint or None)
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.cls_id, self.sep_id = vocab.cls_id, vocab.sep_id
    self.max_positions = bert_cfg.max_position_embeddings
    self.bert = text_encoder.BertModel(bert_cfg, rngs=rngs)
    self.embed = _token_table(cfg, rngs)
    self.decoder_bias = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, False, dtype=dt, rngs=rngs)
    self.decoder_layers = nnx.List(
        [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)])
    self.decoder_norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.out = layers.Dense((cfg.d_model,), (cfg.d_model,), ('embed', 'mlp'), dtype=dt,
                            rngs=rngs)
    self.out.kernel[...] = jnp.zeros_like(self.out.kernel[...])
    self.logit_scale = nnx.Param(jnp.asarray(20.0, jnp.float32))
    self.dropout = layers.Dropout(cfg.dropout_rate)
    self.logits_dense = None

  def encode_pooled(self, encoder_input_tokens: Array, *, deterministic: bool = True,
                    rngs: nnx.Rngs | None = None) -> tuple[Array, Array, Array]:
    """(states [b, s + 2, d], their mask, sentence embeddings [b, d])."""
    tokens = encoder_input_tokens[:, :self.max_positions - 2]
    b = tokens.shape[0]
    length = (tokens > 0).sum(1)
    ids = jnp.concatenate([jnp.full((b, 1), self.cls_id, tokens.dtype), tokens,
                           jnp.zeros((b, 1), tokens.dtype)], axis=1)
    ids = ids.at[jnp.arange(b), length + 1].set(self.sep_id)
    valid = ids > 0
    states = self.bert.states(ids, valid)
    pooled = text_encoder.mean_pool(states, valid)
    encoded = self.dropout(states.astype(self.cfg.compute_dtype), deterministic=deterministic,
                           rngs=rngs)
    return encoded, valid, pooled

  def encode(self, encoder_input_tokens: Array, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
    encoded, valid, _ = self.encode_pooled(encoder_input_tokens, deterministic=deterministic,
                                           rngs=rngs)
    return encoded, valid

  def pooled_logits(self, y: Array, pooled: Array) -> Array:
    """Logits [n, t, vocab] of decoder states y [n, t, d] with the sentence
    embeddings pooled [n, d] of their inputs."""
    h = pooled[:, None, :].astype(y.dtype) + self.out(y)
    logits = jnp.einsum('btd,vd->btv', h, self.embed[...].astype(y.dtype))
    return (logits * self.logit_scale[...].astype(y.dtype)).astype(jnp.float32)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    kw = dict(deterministic=deterministic, rngs=rngs)
    encoded, valid, pooled = self.encode_pooled(encoder_input_tokens, **kw)
    return self.pooled_logits(self.decode_hidden(encoded, valid, decoder_input_tokens, **kw),
                              pooled)

  def decode(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array, *,
             deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """Logits [b, t, vocab] from `encode`'s outputs, the sentence embedding
    pooled from those states (without dropout: the model's own)."""
    y = self.decode_hidden(encoded, encoder_valid, decoder_input_tokens,
                           deterministic=deterministic, rngs=rngs)
    return self.pooled_logits(y, text_encoder.mean_pool(encoded, encoder_valid))

  def decoding_context(self, encoded: Array, encoder_valid: Array):
    """(cross-attention keys/values, the sentence embeddings [b, d]): the
    logits of every step read the query's pooled embedding too."""
    return (self.cross_attention_cache(encoded),
            text_encoder.mean_pool(encoded, encoder_valid))

  def decode_step(self, tokens: Array, step: int, cross_cache, encoder_valid: Array,
                  self_cache) -> tuple[Array, list]:
    cross, pooled = cross_cache
    y, new_cache = self.decode_step_hidden(tokens, step, cross, encoder_valid, self_cache)
    per_beam = jnp.repeat(pooled, tokens.shape[0] // pooled.shape[0], axis=0)
    return self.pooled_logits(y, per_beam)[:, 0], new_cache


def _token_table(cfg: ConfigBase, rngs: nnx.Rngs) -> nnx.Param:
  """[vocab, d] unit-variance token embeddings (identifier models)."""
  if cfg.vocab_size <= 0:
    raise ValueError(f'{type(cfg).__name__}.vocab_size must be set (it normally comes '
                     'from the identifier scheme).')
  return layers._param(rngs, nnx.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model),
                       ('vocab', 'embed'))


def _item_table(cfg: ConfigBase, stddev: float, rngs: nnx.Rngs) -> nnx.Param:
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

  Trained as in the paper, on every position of a user's sequence in one pass
  (`training_examples = 'sequence'`): the state after item t is scored
  against item t+1 for every t, full-catalog cross-entropy.
  """

  def __init__(self, cfg: SASRecConfig, *, rngs: nnx.Rngs):
    if cfg.num_items <= 0 or cfg.max_len <= 0:
      raise ValueError('SASRec needs SASRecConfig.num_items and max_len (filled in by the '
                       'training run from the data and max_history).')
    dt = cfg.compute_dtype
    self.cfg = cfg
    # As in SASRec: small item embeddings, scaled by sqrt(d) on input, and raw
    # dot products as scores (unit-variance rows learn far slower here).
    self.item_embed = _item_table(cfg, 0.02, rngs)
    self.pos_embed = layers._param(rngs, nnx.initializers.normal(0.02),
                                   (cfg.max_len, cfg.d_model), ('length', 'embed'))
    self.blocks = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  def states(self, items: Array, segment_ids: Array | None = None,
             positions: Array | None = None, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None) -> Array:
    """[b, t] item ids -> the causal states [b, t, d] after each item. Packed
    rows (several windows per row) give each item's `segment_ids` and its
    `positions` within its window: attention stays inside a window and
    positions restart at each, so a packed window's states equal its own
    row's."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    t = items.shape[1]
    valid = items > 0
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), items.shape)
    if self.cfg.positions_from_end:
      # Each window's length m: its items move to positions max_len - m ...
      # max_len - 1 (a packed window's, by its segment id).
      if segment_ids is None:
        length = valid.sum(axis=1, keepdims=True)
      else:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, None, :]
        length = same.sum(axis=-1)
      positions = jnp.clip(positions + self.cfg.max_len - length, 0, self.cfg.max_len - 1)
    pos = jnp.take(self.pos_embed[...], positions, axis=0)
    x = jnp.take(self.item_embed[...], items, axis=0) * jnp.sqrt(self.cfg.d_model) + pos
    x = self.dropout(x.astype(self.cfg.compute_dtype), **kw)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    for block in self.blocks:
      x = block(x, mask, None, **kw)
    return self.norm(x)

  def score_items(self, items: Array, *, deterministic: bool = True,
                  rngs: nnx.Rngs | None = None) -> Array:
    """[b, max_len] history item ids -> float32 scores [b, rows] of item ids."""
    x = self.states(items, deterministic=deterministic, rngs=rngs)
    last = jnp.maximum((items > 0).sum(axis=1) - 1, 0)  # [b]: the most recent item
    return _item_scores(x[jnp.arange(items.shape[0]), last], self.item_embed[...],
                        self.cfg.num_items)

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of the next item at every position with one (batch
    'items' [b, t] and 'next_items' [b, t], 0 where there is none; packed
    rows also 'segment_ids' and 'positions')."""
    x = self.states(batch['items'], batch.get('segment_ids'), batch.get('positions'),
                    deterministic=deterministic, rngs=rngs)
    b, t, d = x.shape
    scores = _item_scores(x.reshape(b * t, d), self.item_embed[...], self.cfg.num_items)
    targets = batch['next_items'].reshape(-1)
    weights = (targets > 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(scores, targets)
    correct = (scores.argmax(-1) == targets).astype(jnp.float32)
    denom = jnp.maximum(weights.sum(), 1.0)
    return (ce * weights).sum() / denom, {'accuracy': (correct * weights).sum() / denom}


class DecoderOnly(nnx.Module):
  """A decoder-only generative recommender over a user's identifier tokens.

  One causal Transformer (num_encoder_layers + num_decoder_layers blocks, so
  as deep as the encoder-decoder it replaces, with T5 relative position bias)
  reads the concatenated Semantic-ID tokens of a user's items, oldest first,
  and is trained on every next token of every item after the first in one
  pass (`training_examples = 'sequence'`, as SASRec and HSTU train) instead
  of one encoder-decoder example per history prefix. Recommendation continues
  a history (0-padded at the start) with `num_levels` tokens by the same,
  optionally trie-constrained, beam search: the history's keys/values are
  computed once per query and shared by its beams.
  """

  def __init__(self, cfg: DecoderOnlyConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.embed = _token_table(cfg, rngs)
    self.bias = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, False, dtype=dt, rngs=rngs)
    self.blocks = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.logits_dense = None if cfg.logits_via_embedding else layers.Dense(
        (cfg.d_model,), (cfg.vocab_size,), ('embed', 'vocab'), dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)

  _embed = EncoderDecoder._embed
  _logits = EncoderDecoder._logits

  def __call__(self, tokens: Array, segment_ids: Array | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """[b, t] tokens (0 = padding) -> float32 next-token logits [b, t, vocab].

    With `segment_ids` [b, t] (packed rows), a token attends only to the
    earlier tokens of its own segment.
    """
    kw = dict(deterministic=deterministic, rngs=rngs)
    t = tokens.shape[1]
    valid = tokens > 0
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    bias = self.bias(t, t)
    x = self.dropout(self._embed(tokens), **kw)
    for block in self.blocks:
      x = block(x, mask, bias, **kw)
    return self._logits(self.dropout(self.norm(x), **kw))

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy of the weighted next tokens (batch 'tokens' [b, t],
    'loss_weights' [b, t]: 1 on the tokens of every item after a window's
    first; optional 'segment_ids' of packed rows)."""
    tokens = batch['tokens']
    segments = batch.get('segment_ids')
    logits = self(tokens[:, :-1], None if segments is None else segments[:, :-1],
                  deterministic=deterministic, rngs=rngs)
    targets = tokens[:, 1:]
    weights = batch['loss_weights'][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(weights.sum(), 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return (ce * weights).sum() / denom, {'accuracy': (correct * weights).sum() / denom}

  def beam_search_inputs(self, history: Array, beam_size: int, num_steps: int):
    """(tokens_to_logits, cache) of `decoding.beam_search` continuing `history`
    [b, s] (0-padded at the start).

    The history runs once (its per-block keys/values stay per query); the
    logits of the first identifier token come from its last position; each
    later step feeds the previous token at position s + step - 1 and attends
    to the history and to the beam's own tokens (cache [b * beams, num_steps]).
    """
    b, s = history.shape
    total = s + num_steps
    bias = self.bias(total, total)  # [1, h, total, total]
    valid = history > 0
    mask = jnp.tril(jnp.ones((s, s), bool))[None, None] & valid[:, None, None, :]
    x = self._embed(history)
    history_kv = []
    for block in self.blocks:
      h = block.attn_norm(x)
      k, v = block.attn.keys_values(h)
      history_kv.append((k, v))
      x = x + block.attn.attend(block.attn.queries(h), k, v, mask, bias[:, :, :s, :s])
      x = x + block.mlp(block.mlp_norm(x), deterministic=True, rngs=None)
    first = self._logits(self.norm(x[:, -1:]))[:, 0]  # [b, vocab]
    hist_mask = valid[:, None, None, :]  # [b, 1, 1, s]
    shape = (b * beam_size, num_steps, self.cfg.num_heads, self.cfg.head_dim)
    cache = [(jnp.zeros(shape, self.cfg.compute_dtype),) * 2 for _ in self.blocks]

    def tokens_to_logits(tokens, cache, step):
      if step == 0:
        return jnp.repeat(first, beam_size, axis=0), cache
      pos = s + step - 1  # where this token sits in the sequence
      y = self._embed(tokens[:, None])  # [n, 1, d]
      new_cache = []
      for block, (hk, hv), (ck, cv) in zip(self.blocks, history_kv, cache):
        h = block.attn_norm(y)
        k_new, v_new = block.attn.keys_values(h)
        ck, cv = ck.at[:, step - 1].set(k_new[:, 0]), cv.at[:, step - 1].set(v_new[:, 0])
        new_cache.append((ck, cv))
        q = block.attn.queries(h)  # [n, 1, h, dk]
        y = y + _attend_history_and_own(block.attn, q, hk, hv, hist_mask, ck, cv, step,
                                        bias[:, :, pos, :s], bias[:, :, pos, s:])
        y = y + block.mlp(block.mlp_norm(y), deterministic=True, rngs=None)
      return self._logits(self.norm(y))[:, 0], new_cache
    return tokens_to_logits, cache


def _attend_history_and_own(attn: layers.MultiHeadAttention, q, hk, hv, hist_mask, ck, cv,
                            step: int, hist_bias, own_bias) -> Array:
  """One decoding position's attention over a query's shared history keys
  [b, s, h, dk] and its beam's own generated keys [n, T, h, dk] (the first
  `step` of them), with relative biases [1, h, s] and [1, h, T]."""
  n, b = q.shape[0], hk.shape[0]
  beams = n // b
  qb = q.reshape(b, beams, *q.shape[2:])  # a query's beams as its positions
  hist = jnp.einsum('bqhd,bkhd->bhqk', qb, hk).astype(jnp.float32)  # [b, h, beams, s]
  hist = jnp.where(hist_mask, hist + hist_bias[:, :, None, :].astype(jnp.float32),
                   jnp.finfo(jnp.float32).min)
  own = jnp.einsum('nqhd,nkhd->nhqk', q, ck).astype(jnp.float32)  # [n, h, 1, T]
  own = own + own_bias[:, :, None, :].astype(jnp.float32)
  own = jnp.where(jnp.arange(ck.shape[1]) < step, own, jnp.finfo(jnp.float32).min)
  own = own.reshape(b, beams, *own.shape[1:]).transpose(0, 2, 1, 3, 4)[:, :, :, 0]  # [b,h,beams,T]
  weights = jax.nn.softmax(jnp.concatenate([hist, own], -1), axis=-1).astype(attn.dtype)
  s = hk.shape[1]
  y = jnp.einsum('bhqk,bkhd->bqhd', weights[..., :s], hv)  # [b, beams, h, dk]
  own_w = weights[..., s:].transpose(0, 2, 1, 3).reshape(n, -1, 1, ck.shape[1])  # [n,h,1,T]
  y = y.reshape(n, 1, *y.shape[2:]) + jnp.einsum('nhqk,nkhd->nqhd', own_w, cv)
  return attn.out(y)


# ---------------------------------------------------------------------------
# Item-level Semantic-ID recommender
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ItemSidBaseConfig(ConfigBase):
  """What the item-level Semantic-ID recommender's configs share (the trunk,
  `ItemSidRec`); each head has its own config: `ItemSidConfig` (parallel)
  and `ItemSidAutoregressiveConfig`.

  Sizes as SASRec's (`gin/models/item_sid.gin`). The fields from `vocab_size`
  on are filled in by the training run from the identifiers and the data.

  Attributes:
    item_id_buckets: rows of a hashed item-id embedding added to each history
      item's code embeddings (0: codes only; -1: one row per item, an exact
      item-id embedding as SASRec's, sized from the data; a row count below
      the catalog hashes items into it).
  """
  d_model: int = 128
  num_heads: int = 2
  head_dim: int = 64
  d_ff: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.5
  activation: str = 'gelu'
  gated_mlp: bool = False
  item_id_buckets: int = 0
  dtype: str = 'auto'
  vocab_size: int = 0
  level_sizes: tuple[int, ...] = ()
  num_items: int = 0
  max_len: int = 0

  POSITIVE = ('d_model', 'num_heads', 'head_dim', 'd_ff', 'num_layers')

  def __post_init__(self):
    super().__post_init__()
    if self.item_id_buckets < -1:
      raise ValueError(f'{type(self).__name__}.item_id_buckets must be -1 (one row per item), '
                       f'0 (none) or a row count, not {self.item_id_buckets}.')


@dataclasses.dataclass(frozen=True)
class ItemSidConfig(ItemSidBaseConfig):
  """The item-level Semantic-ID recommender with the parallel head
  (`ItemSidModel`, module `ItemSidParallel`): one classifier per code level,
  all levels predicted at once with a multi-token loss, as RPG; items are
  ranked by the sum of their codes' log-probabilities over the whole
  catalog, exactly.

  Attributes:
    temperature: > 0: the logits are cosine similarities of the projected
      state and the code embeddings divided by it (RPG: 0.07); 0: raw dot
      products.
    loss: the training loss. 'codes': the mean over levels of each code's
      cross-entropy (RPG's multi-token loss; its cost does not grow with the
      catalog). 'catalog': the cross-entropy of the next item's whole ID
      against every ID that exists, i.e. the summed code logits normalized
      over the catalog (the distribution constrained decoding ranks by),
      computed as one [positions, items] product like SASRec's softmax
      (needs temperature 0). 'both': their sum. The item ranking is the same
      function of the codes either way.
  """
  temperature: float = 0.0
  loss: str = 'codes'

  scores_items = True

  def __post_init__(self):
    super().__post_init__()
    if self.loss not in ('codes', 'catalog', 'both'):
      raise ValueError(f"ItemSidConfig.loss must be 'codes', 'catalog' or 'both', not "
                       f'{self.loss!r}.')
    if self.loss != 'codes' and self.temperature > 0:
      # The catalog loss folds the level projections into one item vector,
      # which only a linear (dot-product) logit allows.
      raise ValueError(f'ItemSidConfig.loss = {self.loss!r} needs temperature = 0 (got '
                       f'{self.temperature}).')

  @classmethod
  def from_json(cls, fields: dict) -> ItemSidBaseConfig:
    """As `ConfigBase.from_json`; a record written while this one class held
    both heads (its `head` field: 'parallel' or 'autoregressive') comes back
    as the config of its head, without the other head's fields."""
    if 'head' in fields:
      head_cls = (ItemSidAutoregressiveConfig if fields['head'] == 'autoregressive'
                  else ItemSidConfig)
      names = {f.name for f in dataclasses.fields(head_cls)}
      fields = {k: v for k, v in fields.items() if k in names}
      if head_cls is not cls:
        return head_cls.from_json(fields)
    return super().from_json(fields)


@dataclasses.dataclass(frozen=True)
class ItemSidAutoregressiveConfig(ItemSidBaseConfig):
  """The item-level Semantic-ID recommender with the autoregressive head
  (`ItemSidAutoregressiveModel`, module `ItemSidAutoregressive`): a small
  causal decoder over the next item's codes, conditioned on the position's
  state; trie-constrained beam search.

  Attributes:
    head_layers: layers of the head's decoder.
  """
  head_layers: int = 1

  POSITIVE = ItemSidBaseConfig.POSITIVE + ('head_layers',)


def _level_tokens(level_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(token id of code c at level l [L, K], whether that code exists [L, K]),
  K = the largest level; tokens as `ItemIds.token_table` numbers them."""
  sizes = np.asarray(level_sizes)
  k = int(sizes.max())
  offsets = NUM_RESERVED_TOKENS + np.concatenate([[0], np.cumsum(sizes)[:-1]])
  exists = np.arange(k)[None, :] < sizes[:, None]
  return np.where(exists, offsets[:, None] + np.arange(k)[None, :], 0).astype(np.int32), exists


class ItemSidRec(nnx.Module):
  """A generative recommender with one position per history item: the trunk
  its heads share (`ItemSidParallel`, `ItemSidAutoregressive`).

  Each history item enters as the mean of its Semantic-ID code embeddings
  (optionally plus a hashed item-id embedding) plus a learned position, as an
  item embedding enters SASRec; a causal Transformer of SASRec's shape runs
  over the items, and a Semantic-ID head predicts the next item's codes from
  every position's state, so every position of every user window trains in
  one pass (`training_examples = 'sequence'`), at SASRec's cost per epoch
  rather than one example per history prefix of L tokens per item.

  Inputs: int32 [b, t, 1 + L] per history position, oldest first, 0-padded
  at the end: channel 0 the item id, channels 1..L its tokens
  (`history_features`). A head subclass builds its parameters after the
  trunk's (`_init_head`) and supplies `_code_log_probs` and
  `beam_search_inputs`.
  """

  def __init__(self, cfg: ItemSidBaseConfig, *, rngs: nnx.Rngs):
    if cfg.vocab_size <= 0 or not cfg.level_sizes or cfg.max_len <= 0 or (
        cfg.item_id_buckets < 0):
      raise ValueError(f'{type(self).__name__} needs vocab_size, level_sizes, max_len and a row '
                       "count for item_id_buckets (filled in by the model class's resolve "
                       'from the identifiers and the data).')
    dt = cfg.compute_dtype
    self.cfg = cfg
    small = nnx.initializers.normal(0.02)
    self.code_embed = layers._param(rngs, small, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    self.id_embed = (layers._param(rngs, small, (cfg.item_id_buckets, cfg.d_model),
                                   ('table_rows', 'embed')) if cfg.item_id_buckets else None)
    self.pos_embed = layers._param(rngs, small, (cfg.max_len, cfg.d_model), ('length', 'embed'))
    self.blocks = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = layers.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
    self.dropout = layers.Dropout(cfg.dropout_rate)
    # Last, so that the trunk's parameters draw the same random numbers
    # whichever head follows (and as they did when one class held both).
    self._init_head(cfg, rngs)

  def _init_head(self, cfg: ItemSidBaseConfig, rngs: nnx.Rngs) -> None:
    """Builds the head's parameters."""
    raise NotImplementedError(f'{type(self).__name__} has no head: use ItemSidParallel or '
                              'ItemSidAutoregressive.')

  # -- the sequence model ----------------------------------------------------------
  def states(self, inputs: Array, segment_ids: Array | None = None,
             positions: Array | None = None, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None) -> Array:
    """[b, t, 1 + L] inputs -> the causal states [b, t, d] after each item
    (packed windows: attention within a segment, positions per window)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    items, tokens = inputs[..., 0], inputs[..., 1:]
    t = items.shape[1]
    valid = items > 0
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), items.shape)
    x = jnp.take(self.code_embed[...], tokens, axis=0).mean(axis=2)  # [b, t, d]
    if self.id_embed is not None:
      rows = (items.astype(jnp.uint32) * jnp.uint32(2654435761)) % self.cfg.item_id_buckets
      rows = jnp.where(self.cfg.item_id_buckets > self.cfg.num_items, items, rows)
      x = x + jnp.take(self.id_embed[...], rows, axis=0)
    x = x * jnp.sqrt(self.cfg.d_model) + jnp.take(self.pos_embed[...], positions, axis=0)
    x = self.dropout(x.astype(self.cfg.compute_dtype), **kw)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    if segment_ids is not None:
      mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    for block in self.blocks:
      x = block(x, mask, None, **kw)
    return self.norm(x)

  def _last_state(self, inputs: Array) -> Array:
    """The state after each history's most recent item: [b, d]."""
    x = self.states(inputs)
    last = jnp.maximum((inputs[..., 0] > 0).sum(axis=1) - 1, 0)
    return x[jnp.arange(inputs.shape[0]), last]

  # -- training --------------------------------------------------------------------
  def _code_log_probs(self, h: Array, target: Array, batch: dict[str, Array], *,
                      deterministic: bool, rngs: nnx.Rngs | None) -> tuple[Array, Array]:
    """[n, d] states, [n, L] the next items' level-local codes (0 where there
    is none) -> (float32 [n, m] the log-probabilities whose negated mean is
    each position's loss, bool [n] whether the next item is predicted)."""
    raise NotImplementedError

  def loss(self, batch: dict[str, Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of the next item's codes at every position (batch
    'inputs' [b, t, 1 + L], 'next_codes' [b, t, L] with -1 where there is no
    next item; packed rows also 'segment_ids' and 'positions'; what else a
    head reads: its `_code_log_probs`). Metric 'accuracy': the share of
    positions whose next item is predicted."""
    x = self.states(batch['inputs'], batch.get('segment_ids'), batch.get('positions'),
                    deterministic=deterministic, rngs=rngs)
    b, t, d = x.shape
    codes = batch['next_codes'].reshape(b * t, -1)  # [n, L]
    weights = (codes[:, 0] >= 0).astype(jnp.float32)
    target = jnp.maximum(codes, 0)
    h = x.reshape(b * t, d)
    picked, correct = self._code_log_probs(h, target, batch, deterministic=deterministic,
                                           rngs=rngs)
    ce = -picked.mean(-1)
    denom = jnp.maximum(weights.sum(), 1.0)
    return ((ce * weights).sum() / denom,
            {'accuracy': (correct.astype(jnp.float32) * weights).sum() / denom})


class ItemSidParallel(ItemSidRec):
  """`ItemSidRec` with the parallel head (`ItemSidConfig`): per level l, a
  projection of the state dotted with level l's code embeddings (tied to the
  input's). An item's score is the sum of its codes' log-probabilities;
  `score_items` computes it for the whole catalog (exact top-k). Trained with
  the mean over levels of each code's cross-entropy (RPG's multi-token loss)
  or with the catalog loss, the softmax of the summed code logits over every
  existing ID (`ItemSidConfig.loss`).
  """

  def _init_head(self, cfg: ItemSidConfig, rngs: nnx.Rngs) -> None:
    self.level_proj = layers.Dense((cfg.d_model,), (len(cfg.level_sizes), cfg.d_model),
                                   ('embed', None, 'mlp'), dtype=cfg.compute_dtype, rngs=rngs)

  def level_log_probs(self, h: Array) -> Array:
    """[..., d] states -> float32 log-probabilities [..., L, K] of every level's
    codes (codes a level lacks: -inf)."""
    tokens, exists = _level_tokens(self.cfg.level_sizes)
    table = jnp.take(self.code_embed[...], jnp.asarray(tokens), axis=0)  # [L, K, d]
    q = self.level_proj(h)  # [..., L, d]
    if self.cfg.temperature > 0:  # cosine similarities / temperature
      unit = lambda v: v * jax.lax.rsqrt(jnp.maximum((v * v).sum(-1, keepdims=True), 1e-12))
      q, table = unit(q.astype(jnp.float32)) / self.cfg.temperature, unit(table)
    logits = jnp.einsum('...ld,lkd->...lk', q, table.astype(q.dtype)).astype(jnp.float32)
    logits = jnp.where(jnp.asarray(exists), logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)

  def item_vectors(self, catalog: Array) -> Array:
    """[rows, L] the catalog's tokens -> [rows, d] vectors whose dot product
    with a state is the sum of the item's code logits (temperature 0): the
    per-level projections folded into the code embeddings, summed over an
    item's codes level by level (never a [rows, L, d] array)."""
    tokens, _ = _level_tokens(self.cfg.level_sizes)
    table = jnp.take(self.code_embed[...], jnp.asarray(tokens), axis=0)  # [L, K, d]
    kernel = self.level_proj.kernel[...]  # [d, L, d]
    folded = jnp.einsum('lke,dle->lkd', table, kernel)  # [L, K, d]
    return self._sum_over_levels(folded, catalog, axis=0)  # [rows, d]

  def _sum_over_levels(self, per_level: Array, catalog: Array, axis: int) -> Array:
    """sum over levels l of `per_level[l]` taken at every catalog item's
    level-l code along `axis` (per_level [L, ..., K, ...]; catalog tokens
    [rows, L]), one level at a time (never a [rows, L, ...] array)."""
    first = jnp.asarray(_level_tokens(self.cfg.level_sizes)[0][:, 0])
    codes = jnp.clip(catalog - first[None], 0, per_level.shape[axis + 1] - 1)  # [rows, L]

    def add_level(total, level):
      values, c = level
      return total + jnp.take(values, c, axis=axis), None
    shape = list(per_level.shape[1:])
    shape[axis] = catalog.shape[0]
    out, _ = jax.lax.scan(add_level, jnp.zeros(shape, per_level.dtype), (per_level, codes.T))
    return out

  def score_items(self, inputs: Array, catalog: Array) -> Array:
    """[b, t, 1 + L] inputs, the catalog's tokens [rows, L] (`ItemIds.token_table`,
    row 0 padding) -> float32 [b, rows]: each item's summed code
    log-probabilities (row 0: -inf). Exact over the whole catalog."""
    logp = self.level_log_probs(self._last_state(inputs))  # [b, L, K]
    scores = self._sum_over_levels(jnp.moveaxis(logp, 1, 0), catalog, axis=1)  # [b, rows]
    return jnp.where(jnp.arange(catalog.shape[0]) > 0, scores, -jnp.inf)

  def beam_search_inputs(self, inputs: Array, beam_size: int, num_steps: int):
    """(tokens_to_logits, cache) of `decoding.beam_search` over the next
    item's L tokens: level l's log-probabilities whatever the prefix, so a
    trie-constrained beam search approximates the exact top-k of
    `score_items` for catalogs too large to score at once (beams are pruned
    level by level; `benchmarks.parallel_decoding` measures its recall)."""
    state = self._last_state(inputs)  # [b, d]
    tokens, exists = _level_tokens(self.cfg.level_sizes)
    logp = self.level_log_probs(state)  # [b, L, K]
    # [b, L, vocab]: each level's log-probabilities at its tokens' ids.
    dense = jnp.full((*logp.shape[:2], self.cfg.vocab_size), -jnp.inf).at[
        :, jnp.arange(len(tokens))[:, None], jnp.asarray(tokens)].set(
            jnp.where(jnp.asarray(exists), logp, -jnp.inf))

    def level_logits(prev, cache, step):
      # The barrier ties each level's per-beam copy to the step before it, so
      # the (unrolled) search holds one [n, vocab] copy at a time instead of
      # XLA scheduling every level's copy up front (L x as much memory).
      level, _ = jax.lax.optimization_barrier((dense[:, step], prev))
      return jnp.repeat(level, beam_size, axis=0), cache
    return level_logits, jnp.zeros((state.shape[0] * beam_size, 1), jnp.int32)

  def _code_log_probs(self, h, target, batch, *, deterministic, rngs):
    """Each level's code log-probability (loss 'codes'); the catalog loss
    (batch 'next_items' [b, t] and the constant 'catalog') puts the item's
    log-probability over the catalog in their place or beside them, and
    counts a position as predicted when its top-scored item is the next."""
    logp = self.level_log_probs(h)  # [n, L, K]
    picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    correct = (logp.argmax(-1) == target).all(-1)
    if self.cfg.loss == 'codes':
      return picked, correct
    # The whole ID against every existing ID.
    scores = jnp.einsum('nd,id->ni', h.astype(jnp.float32), self.item_vectors(batch['catalog']))
    scores = jnp.where(jnp.arange(scores.shape[1]) > 0, scores, jnp.finfo(jnp.float32).min)
    items = batch['next_items'].reshape(-1)
    catalog_ce = optax.softmax_cross_entropy_with_integer_labels(scores, items)
    correct = scores.argmax(-1) == items
    if self.cfg.loss == 'catalog':
      return -catalog_ce[:, None], correct
    return picked - catalog_ce[:, None], correct  # mean code CE + catalog CE


class ItemSidAutoregressive(ItemSidRec):
  """`ItemSidRec` with the autoregressive head (`ItemSidAutoregressiveConfig`):
  a `head_layers`-layer causal decoder over [state, codes of the next item so
  far] predicts the next code; trained for all positions at once (teacher
  forcing), decoded by trie-constrained beam search (`beam_search_inputs`).
  """

  def _init_head(self, cfg: ItemSidAutoregressiveConfig, rngs: nnx.Rngs) -> None:
    small = nnx.initializers.normal(0.02)
    self.head_start = layers.Dense((cfg.d_model,), (cfg.d_model,), ('embed', 'mlp'),
                                   dtype=cfg.compute_dtype, rngs=rngs)
    self.head_pos = layers._param(rngs, small, (len(cfg.level_sizes), cfg.d_model),
                                  (None, 'embed'))
    self.head_blocks = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.head_layers)])
    self.head_norm = layers.RMSNorm(cfg.d_model, dtype=cfg.compute_dtype, rngs=rngs)

  def _allowed_tokens(self) -> Array:
    """bool [L, vocab]: the tokens of each level."""
    tokens, exists = _level_tokens(self.cfg.level_sizes)
    allowed = np.zeros((len(self.cfg.level_sizes), self.cfg.vocab_size), bool)
    for level in range(len(allowed)):
      allowed[level, tokens[level][exists[level]]] = True
    return jnp.asarray(allowed)

  def _head_logits(self, h: Array, prefix: Array, *, deterministic: bool = True,
                   rngs: nnx.Rngs | None = None) -> Array:
    """[n, d] states, [n, j] the next item's tokens so far (j < L) -> float32
    logits [n, j + 1, vocab] of the code after each prefix length (level
    l's logits cover level l's tokens only)."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    y = jnp.concatenate([self.head_start(h)[:, None],
                         jnp.take(self.code_embed[...], prefix, axis=0).astype(h.dtype)
                         * jnp.sqrt(self.cfg.d_model).astype(h.dtype)], axis=1)
    j = y.shape[1]
    y = self.dropout(y + self.head_pos[...][:j].astype(y.dtype), **kw)
    mask = jnp.tril(jnp.ones((j, j), bool))[None, None]
    for block in self.head_blocks:
      y = block(y, mask, None, **kw)
    y = self.head_norm(y)
    logits = jnp.einsum('njd,vd->njv', y, self.code_embed[...].astype(y.dtype))
    return jnp.where(self._allowed_tokens()[:j], logits.astype(jnp.float32), -jnp.inf)

  def beam_search_inputs(self, inputs: Array, beam_size: int, num_steps: int):
    """(tokens_to_logits, cache) of `decoding.beam_search` over the next
    item's L tokens; the cache holds each beam's tokens so far [n, L]."""
    h = jnp.repeat(self._last_state(inputs), beam_size, axis=0)  # [n, d]

    def tokens_to_logits(prev, cache, step):
      if step:
        cache = cache.at[:, step - 1].set(prev)
      return self._head_logits(h, cache[:, :step])[:, step], cache
    return tokens_to_logits, jnp.zeros((h.shape[0], num_steps), jnp.int32)

  def _code_log_probs(self, h, target, batch, *, deterministic, rngs):
    """Each code's log-probability given the codes before it (teacher forcing)."""
    first = jnp.asarray(_level_tokens(self.cfg.level_sizes)[0][:, 0])
    target_tokens = first[None] + target  # [n, L]
    logp = jax.nn.log_softmax(self._head_logits(
        h, target_tokens[:, :-1], deterministic=deterministic, rngs=rngs), axis=-1)
    picked = jnp.take_along_axis(logp, target_tokens[..., None], axis=-1)[..., 0]
    return picked, (logp.argmax(-1) == target_tokens).all(-1)


# ---------------------------------------------------------------------------
# Model classes: what gin binds (`MODEL = @models.EncoderDecoderModel()`)
# ---------------------------------------------------------------------------
ModelConfig = ConfigBase  # any model's config (TransformerConfig: old records)

# Config class name -> the model class that owns it (filled in by subclassing
# `Model`), so that a config read back from a run record finds its model.
_MODELS: dict[str, type['Model']] = {}


class Model:
  """A model as gin binds it: its config, the module the config builds, and
  the conversion of recommendation data into the module's inputs (what t5x
  models do with their FEATURE_CONVERTER_CLS).

  A model class names its config class (`CONFIG`) and module (`MODULE`);
  defining one registers it, so that its run records load back
  (`config_from_json`, `model_for`). Adding a model is one subclass and one
  gin file (tests/models_registry_test.py defines one in the test).

  Arrays (numpy, host side): leave-one-out features are
  'encoder_input_tokens' [n, s] (the history's identifier tokens, 0-padded
  at the end) with 'target_item' [n] (evaluation) or the decoder arrays
  (prefix training examples, `features.train_arrays`).
  """
  CONFIG: type = None
  MODULE: type[nnx.Module] = None
  # 'prefix': one example per history prefix (encoder inputs and the next
  # item's identifier); 'sequence': one per user window, every next-item
  # position trained in one pass (`genrec.data.windows`).
  training_examples = 'prefix'
  # Whether prefix examples may be packed several to a row
  # (`features.pack_prefix_arrays`; the module reads segment ids).
  packs_prefix_examples = False
  # Whether the encoder is a pretrained checkpoint's (it reads that checkpoint's
  # WordPiece tokens; document retrieval tokenizes for it and warm-starts from it).
  pretrained_encoder = False
  score_kind = 'beam log-probabilities'  # what its scores are (export manifests)

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.CONFIG is not None:
      _MODELS[cls.CONFIG.__name__] = cls

  def __init__(self, config: ConfigBase | None = None):
    config = self.CONFIG() if config is None else config
    if isinstance(config, TransformerConfig):
      raise ValueError(f'{type(self).__name__} takes a {self.CONFIG.__name__}; a TransformerConfig '
                       '(an old run record) builds its model with models.model_for(config).')
    if not isinstance(config, self.CONFIG):
      raise ValueError(f'{type(self).__name__} takes a {self.CONFIG.__name__}, not '
                       f'{type(config).__name__}.')
    self.config = config

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.config})'

  @property
  def name(self) -> str:
    """The model's name in results (`results.json` 'model')."""
    return type(self).__name__

  @property
  def scores_items(self) -> bool:
    """Ranks the catalog in one pass (`score_items`), not by beam search."""
    return self.config.scores_items

  def resolve(self, ids: ItemIds, num_items: int, max_history: int) -> 'Model':
    """The model with its config's data-given sizes filled in: `vocab_size`,
    `num_items`, `max_len` (those of them it has) and the compute dtype that
    'auto' resolves to here, so the run records (and infer rebuilds) the
    dtype it trained with."""
    given = {'vocab_size': ids.vocab_size, 'num_items': num_items, 'max_len': max_history,
             'dtype': str(self.config.compute_dtype)}
    names = {f.name for f in dataclasses.fields(self.config)}
    return type(self)(dataclasses.replace(
        self.config, **{k: v for k, v in given.items() if k in names}))

  # -- recommendation inputs (numpy) --------------------------------------------
  def training_arrays(self, data: sequences.SequenceData, ids: ItemIds, max_history: int,
                      prefix_arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """What the model trains on: `prefix_arrays` converted (prefix models) or
    the user windows of `data` (sequence models)."""
    return self.model_inputs(prefix_arrays, ids)

  def model_inputs(self, arrays: dict[str, np.ndarray], ids: ItemIds) -> dict[str, np.ndarray]:
    """Leave-one-out features in the form the module reads."""
    return arrays

  def training_constants(self, ids: ItemIds) -> dict[str, np.ndarray] | None:
    """Arrays every training step reads besides its batch (`Trainer`)."""
    return None

  def catalog(self, ids: ItemIds) -> np.ndarray | None:
    """What `score_items` reads of every item besides the inputs, if anything."""
    return None

  # -- serving (jax, inside the exported function) --------------------------------
  def serving_inputs(self, history: Array, token_table: Array) -> Array:
    """History item ids int32 [b, h] (oldest first, 0-padded at the end) ->
    the module's inputs: here the histories' identifier tokens."""
    return token_table[history].reshape(history.shape[0], -1)

  def score_items(self, module: nnx.Module, inputs: Array, token_table: Array) -> Array:
    """Item-scoring models: the module's scores of every item id."""
    return module.score_items(inputs)


def _target_items(arrays: dict[str, np.ndarray], ids: ItemIds) -> np.ndarray:
  """int32 [n]: the target item of leave-one-out features (prefix training
  examples name it by its identifier tokens)."""
  if 'target_item' in arrays:
    return arrays['target_item'].astype(np.int32)
  return ids.tokens_to_items(
      arrays['decoder_target_tokens'][:, :ids.num_levels]).astype(np.int32)


class EncoderDecoderModel(Model):
  """TIGER: the encoder reads the history's identifier tokens, the decoder
  generates the next item's by (trie-constrained) beam search."""
  CONFIG = EncoderDecoderConfig
  MODULE = EncoderDecoder
  packs_prefix_examples = True

  @property
  def name(self) -> str:
    return 'encoder_decoder'


class ProjectionModel(EncoderDecoderModel):
  """The encoder-decoder with an item projection head (Lite-LLM4Rec): items
  are ranked in one pass from the decoder's first state instead of decoded.

  Takes the encoder-decoder's sizes (an `EncoderDecoderConfig`, e.g. of
  gin/models/tiger.gin) or a `ProjectionConfig`."""
  CONFIG = ProjectionConfig
  MODULE = ProjectionEncoderDecoder
  packs_prefix_examples = False
  score_kind = 'item logits'

  def __init__(self, config: EncoderDecoderConfig | None = None):
    if config is not None and not isinstance(config, ProjectionConfig):
      config = ProjectionConfig(**dataclasses.asdict(config))
    super().__init__(config)

  @property
  def name(self) -> str:
    return 'encoder_decoder + projection head'

  def model_inputs(self, arrays, ids):
    return {'encoder_input_tokens': arrays['encoder_input_tokens'],
            'target_item': _target_items(arrays, ids)}


class BertEncoderDecoderModel(EncoderDecoderModel):
  """A pretrained BERT encoder under genrec's decoder (document retrieval
  from WordPiece inputs; `BertEncoderDecoder`)."""
  CONFIG = BertEncoderDecoderConfig
  MODULE = BertEncoderDecoder
  pretrained_encoder = True
  packs_prefix_examples = False

  @property
  def name(self) -> str:
    return 'bert_encoder_decoder'


class DecoderOnlyModel(Model):
  """One causal stack over the concatenated identifier tokens of a user's
  items, trained on every next item of a window in one pass; recommends by
  continuing the history (0-padded at the start) with beam search."""
  CONFIG = DecoderOnlyConfig
  MODULE = DecoderOnly
  training_examples = 'sequence'

  @property
  def name(self) -> str:
    return 'decoder_only'

  def training_arrays(self, data, ids, max_history, prefix_arrays):
    return windows.sequence_train_arrays(data.train_sequences(), ids, max_history)

  def model_inputs(self, arrays, ids):
    return {**arrays, 'encoder_input_tokens': windows.left_pad(arrays['encoder_input_tokens'])}

  def serving_inputs(self, history, token_table):
    tokens = super().serving_inputs(history, token_table)
    count = (tokens > 0).sum(axis=1, keepdims=True)  # `windows.left_pad` on the device
    index = (jnp.arange(tokens.shape[1])[None] + count) % tokens.shape[1]
    return jnp.take_along_axis(tokens, index, axis=1)


class SASRecModel(Model):
  """SASRec: item-id embeddings, every item scored in one pass; needs
  single-level identifiers (`ids.AtomicIds`)."""
  CONFIG = SASRecConfig
  MODULE = SASRec
  training_examples = 'sequence'
  score_kind = 'item logits'

  @property
  def name(self) -> str:
    return 'sasrec'

  def training_arrays(self, data, ids, max_history, prefix_arrays):
    return windows.sequence_train_arrays(data.train_sequences(), ids, max_history,
                                         item_ids=True)

  def model_inputs(self, arrays, ids):
    """The history tokens mapped back to item ids."""
    if ids.num_levels != 1:
      raise ValueError(f'SASRec embeds item ids: use ID_SCHEME = @ids.AtomicIds(), not '
                       f'{ids.scheme!r} with {ids.num_levels} levels.')
    item_of_token = np.zeros(ids.vocab_size, np.int32)
    item_of_token[ids.token_table()[1:, 0]] = np.arange(1, ids.num_items + 1)
    return {'encoder_input_tokens': item_of_token[arrays['encoder_input_tokens']],
            'target_item': _target_items(arrays, ids)}

  def serving_inputs(self, history, token_table):
    return history


class _ItemSidModel(Model):
  """What the item-level Semantic-ID recommender's model classes share (the
  trunk, `ItemSidRec`): one position per history item, a Semantic-ID head
  over the next item's codes; `ItemSidModel` (parallel head) and
  `ItemSidAutoregressiveModel` name the head.

  Inputs: int32 [..., t, 1 + L] per history position: channel 0 the item id,
  channels 1..L its tokens (`history_features`)."""
  training_examples = 'sequence'

  def resolve(self, ids, num_items, max_history):
    """Also the identifiers' level sizes and, for `item_id_buckets = -1`, one
    item-id row per item."""
    cfg = self.config
    buckets = num_items + 1 if cfg.item_id_buckets == -1 else cfg.item_id_buckets
    return type(self)(dataclasses.replace(
        cfg, vocab_size=ids.vocab_size, level_sizes=tuple(int(s) for s in ids.level_sizes),
        num_items=num_items, max_len=max_history, dtype=str(cfg.compute_dtype),
        item_id_buckets=buckets))

  @staticmethod
  def history_features(items, token_table):
    """[..., t] item ids -> int32 [..., t, 1 + L] model inputs (numpy or jax)."""
    xp = jnp if isinstance(items, jax.Array) else np
    return xp.concatenate([items[..., None], token_table[items]], axis=-1).astype(xp.int32)

  @classmethod
  def window_arrays(cls, user_windows: dict[str, np.ndarray], ids: ItemIds
                    ) -> dict[str, np.ndarray]:
    """Packed user windows (`windows.sequence_train_arrays(item_ids=True)`) ->
    'inputs' [n, t, 1 + L], 'next_codes' [n, t, L] (level-local codes of the
    next item, -1 where there is none), 'next_items', 'segment_ids', 'positions'."""
    table = ids.token_table()
    nxt_items = user_windows['next_items']
    nxt = np.where(nxt_items[..., None] > 0, ids.codes[nxt_items], -1)
    out = {'inputs': cls.history_features(user_windows['items'], table),
           'next_codes': nxt.astype(np.int32), 'next_items': nxt_items}
    return out | {k: user_windows[k] for k in ('segment_ids', 'positions') if k in user_windows}

  def training_arrays(self, data, ids, max_history, prefix_arrays):
    return self.window_arrays(windows.sequence_train_arrays(
        data.train_sequences(), ids, max_history, item_ids=True), ids)

  def model_inputs(self, arrays, ids):
    """Leave-one-out history tokens [n, t * L] (0-padded at the end) -> inputs."""
    tokens = arrays['encoder_input_tokens']
    items = ids.tokens_to_items(tokens.reshape(len(tokens), -1, ids.num_levels))
    return {**arrays, 'encoder_input_tokens': self.history_features(items, ids.token_table()),
            'target_item': _target_items(arrays, ids)}

  def serving_inputs(self, history, token_table):
    return self.history_features(history, token_table)


class ItemSidModel(_ItemSidModel):
  """The item-level Semantic-ID recommender with the parallel head
  (`ItemSidParallel`): every code level predicted at once; items ranked by
  the sum of their codes' log-probabilities over the whole catalog."""
  CONFIG = ItemSidConfig
  MODULE = ItemSidParallel
  score_kind = "the sum of the item's code log-probabilities"

  @property
  def name(self) -> str:
    return 'item_sid (parallel head)'

  def training_constants(self, ids):
    """The catalog's tokens, for the catalog loss."""
    return {'catalog': ids.token_table()} if self.config.loss != 'codes' else {}

  def catalog(self, ids):
    return ids.token_table()

  def score_items(self, module, inputs, token_table):
    return module.score_items(inputs, token_table)


class ItemSidAutoregressiveModel(_ItemSidModel):
  """The item-level Semantic-ID recommender with the autoregressive head
  (`ItemSidAutoregressive`): a small decoder over the next item's codes,
  decoded by trie-constrained beam search."""
  CONFIG = ItemSidAutoregressiveConfig
  MODULE = ItemSidAutoregressive

  @property
  def name(self) -> str:
    return 'item_sid (autoregressive head)'


def model_for(config: ModelConfig) -> Model:
  """The model that owns `config` (a run record's config: `config_from_json`)."""
  if isinstance(config, TransformerConfig):
    config = config.to_model_config()
  if type(config).__name__ not in _MODELS:
    raise ValueError(f'No model class owns {type(config).__name__}; define a models.Model '
                     'subclass with CONFIG = it.')
  return _MODELS[type(config).__name__](config)


def legacy_settings(saved: dict) -> dict:
  """A flattened run_settings.json record of an older form as the model
  classes of today record the same model, so that such a run resumes without
  counting the new form as a change of settings. Older forms: written before
  the model classes (`model_config.*`: `TransformerConfig` fields,
  recommendation runs also a top-level `head`), or while one `ItemSidConfig`
  held both item-level heads (`model_config.head`). Other records come back
  as they are."""
  prefix = 'model_config.'
  fields = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
  if 'architecture' in fields:
    config = TransformerConfig.from_json(fields).to_model_config()
  elif 'head' in fields:
    config = ItemSidConfig.from_json(fields)
  elif 'head' in saved:  # a config class of today: the one with exactly these fields
    config = next((m.CONFIG.from_json(fields) for m in _MODELS.values()
                   if {f.name for f in dataclasses.fields(m.CONFIG)} == set(fields)), None)
  else:
    return saved
  out = {k: v for k, v in saved.items() if k != 'head'}
  if 'architecture' in fields or 'head' in fields:  # the config's fields changed
    out = {k: v for k, v in out.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in
                json.loads(json.dumps(dataclasses.asdict(config), default=str)).items()})
  if 'head' in saved and config is not None:  # a recommendation record names its model now
    out['model'] = model_for(config).name
  return out


def config_from_json(fields: dict, name: str = 'TransformerConfig') -> ModelConfig:
  """A model config saved as JSON with its class name (run_config.json).

  Records written before the model classes hold a `TransformerConfig` (its
  `architecture` names the model): they come back as their model's config;
  an `ItemSidConfig` with a `head` field comes back as its head's config
  (`ItemSidConfig.from_json`).
  """
  if name == 'TransformerConfig':
    return TransformerConfig.from_json(fields).to_model_config()
  if name not in _MODELS:
    raise ValueError(f'Unknown model config class {name!r}; genrec knows {sorted(_MODELS)}.')
  return _MODELS[name].CONFIG.from_json(fields)


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
  """The module a config builds (its model's `MODULE`)."""
  return type(model_for(cfg)).MODULE


def _module_config(cfg: ModelConfig) -> ConfigBase:
  """The config a module is built from (a TransformerConfig: its model's)."""
  return cfg.to_model_config() if isinstance(cfg, TransformerConfig) else cfg


# For functions compiled to run once (parameter init): XLA's backend otherwise
# spends seconds per random op (the threefry rounds of every parameter).
ONE_SHOT_COMPILE_OPTIONS = {'xla_backend_optimization_level': 0,
                            'xla_llvm_disable_expensive_passes': True}


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
  """Fresh parameters as a pure dict (traceable: jit it with out_shardings)."""
  cfg = _module_config(cfg)
  with nnx.use_eager_sharding(False):
    return nnx.to_pure_dict(nnx.state(model_class(cfg)(cfg, rngs=nnx.Rngs(params=rng))))


def create_model(cfg: ModelConfig, rng: jax.Array) -> nnx.Module:
  """A ready model on the default device (for inference, tests, notebooks)."""
  graphdef, _ = nnx.split(abstract_model(cfg))
  init = jax.jit(init_params, static_argnums=0).lower(cfg, rng).compile(
      compiler_options=ONE_SHOT_COMPILE_OPTIONS)
  return nnx.merge(graphdef, init(rng))


def abstract_model(cfg: ModelConfig) -> nnx.Module:
  """The model with ShapeDtypeStructs instead of arrays (no memory, no compute)."""
  cfg = _module_config(cfg)
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: model_class(cfg)(cfg, rngs=nnx.Rngs(params=0)))


def grow_params(params: dict, cfg: ModelConfig, fills: dict) -> dict:
  """`params` (a pure dict of host arrays) grown to the shapes of `cfg`'s model.

  Wherever an axis of the model is longer than the array's, the entries that
  follow are `fills[name](array, axis, count)`, `name` being the logical axis
  name the module gives that axis ('vocab', 'table_rows', ...; `grow_zeros`,
  `grow_mean`): a larger token vocabulary grows the token table's rows and
  the logits projection's columns alike, and no other axis that merely has
  the same size. An axis that grows without a fill is refused by name.
  """
  flat = nnx.to_flat_state(nnx.state(abstract_model(cfg)))
  shapes = {tuple(path): v.shape for path, v in flat}
  axes = {tuple(path): v.get_metadata().get('out_sharding') for path, v in flat}

  def grow(path, x):
    key = tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)
    x = np.asarray(x)
    for axis, (size, want) in enumerate(zip(x.shape, shapes[key])):
      if want > size:
        name = (axes[key] or (None,) * x.ndim)[axis]
        if name not in fills:
          raise ValueError(f"Parameter {'/'.join(map(str, key))} grows along its {name!r} axis "
                           f'({size} -> {want}), which has no fill (fills: {sorted(fills)}).')
        x = np.concatenate([x, np.asarray(fills[name](x, axis, want - size), x.dtype)], axis)
    return x
  return jax.tree_util.tree_map_with_path(grow, params)


def grow_zeros(x: np.ndarray, axis: int, count: int) -> np.ndarray:
  """`grow_params` fill: zero entries (e.g. rows of items nothing trained)."""
  shape = list(x.shape)
  shape[axis] = count
  return np.zeros(shape, x.dtype)


def grow_mean(entries=slice(None)):
  """`grow_params` fill: copies of the mean of `entries` along the axis (e.g.
  the mean token, or the mean of the identifier tokens)."""
  def fill(x: np.ndarray, axis: int, count: int) -> np.ndarray:
    mean = np.take(x, np.arange(x.shape[axis])[entries], axis).mean(axis, keepdims=True)
    return np.repeat(mean, count, axis)
  return fill
