"""Item content vectors for identifier schemes: any [num_items + 1, d] matrix.

The content reaches a scheme as an argument: its `content_fn(data)` reads
the data set's item text or attributes (`SequenceData` or any object with
`name`, `num_items`, `item_text`, `item_attributes`).

- `text_embeddings`: all-MiniLM-L6-v2 sentence embeddings of "title; brand;
  categories" (TIGER embeds the same fields with a sentence encoder);
- `attribute_tfidf`: a TF-IDF bag of categorical attribute ids, reduced by a
  randomized SVD, for data sets without text;
- `item_content` (the default of every content-based scheme): text when the
  data set has item text, else attributes.
"""

import os

from absl import logging
import numpy as np

CACHE_ENV = 'GENREC_CACHE_DIR'


def item_text_strings(data) -> list[str]:
  """"title; brand; categories" of items 1..N ('' for an item without text;
  a brand 'Unknown' is Amazon's own placeholder and is left out)."""
  out = []
  for fields in data.item_text[1:]:
    fields = fields or {}
    parts = [fields.get('title') or '']
    if fields.get('brand') and fields['brand'] != 'Unknown':
      parts.append(fields['brand'])
    cats = fields.get('categories') or []
    if cats:
      parts.append(', '.join(' > '.join(path) for path in cats))
    if fields.get('description'):
      parts.append(fields['description'][:500])
    out.append('; '.join(p for p in parts if p))
  return out


def text_embeddings(data, cache_dir: str | None = None) -> np.ndarray:
  """MiniLM embeddings of every item's text: float32 [num_items + 1, 384]
  (row 0 zeros), unit rows.

  Args:
    data: a data set with item_text.
    cache_dir: where embeddings are cached by a digest of the texts (default
      $GENREC_CACHE_DIR, else ~/.cache/genrec); '' disables the cache.
  """
  if getattr(data, 'item_text', None) is None:
    raise ValueError(f'Data set {data.name!r} has no item text (item_text.jsonl); use '
                     'content_fn = @content.attribute_tfidf or add the text file.')
  from genrec import text_encoder  # the encoder only when text is used
  if cache_dir is None:
    cache_dir = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache',
                                                            'genrec')
  texts = item_text_strings(data)
  empty = sum(not t for t in texts)
  if empty:
    logging.warning('%s: %d of %d items have no text; their content vectors are those of '
                    'the empty text.', data.name, empty, len(texts))
  emb = text_encoder.encode(texts, cache_dir=cache_dir or None, cache_key=f'{data.name}-items')
  out = np.zeros((len(texts) + 1, emb.shape[1]), np.float32)
  out[1:] = emb
  return out


def _name(content_fn) -> str:
  """The content function's name (through functools.partial)."""
  return getattr(content_fn, '__name__', None) or getattr(
      getattr(content_fn, 'func', None), '__name__', 'custom')


def tag(content_fn) -> str:
  """A suffix for scheme names: '' for the default `item_content`, else the
  content function's name ('-attribute_tfidf', '-text_embeddings', ...)."""
  name = _name(content_fn)
  return '' if name == 'item_content' else f'-{name}'


def describe(content_fn, data) -> str:
  """What `content_fn` reads on `data`, for results tables: 'text',
  'attributes', or the function's name for another content function."""
  name = _name(content_fn)
  if name == 'item_content':
    name = 'text_embeddings' if getattr(data, 'item_text', None) is not None else 'attribute_tfidf'
  return {'text_embeddings': 'text', 'attribute_tfidf': 'attributes'}.get(name, name)


def item_content(data) -> np.ndarray:
  """Text embeddings where the data set has item text, else attribute TF-IDF."""
  if getattr(data, 'item_text', None) is not None:
    return text_embeddings(data)
  return attribute_tfidf(data)


def attribute_tfidf(data, dim: int = 64, seed: int = 0) -> np.ndarray:
  """TF-IDF bag of attribute ids, L2-normalized, projected to `dim` dims.

  Args:
    data: a SequenceData with item_attributes.
    dim: output dimension (the top singular directions of the TF-IDF matrix).
    seed: seeds the randomized SVD.

  Returns:
    float32 [num_items + 1, d] (row 0 zeros), rows L2-normalized; d = min(dim,
    number of distinct attributes).
  """
  if data.item_attributes is None:
    raise ValueError(f'Data set {data.name!r} has neither item text nor item attributes: '
                     'content-based identifiers (k-means, RQ-VAE) need one of them '
                     '(item_text.jsonl or item2attributes.json); or use atomic, random, '
                     'sequential or collaborative IDs.')
  attrs = data.item_attributes
  vocab = 1 + max((int(a.max()) for a in attrs if a.size), default=0)
  n = len(attrs)
  tf = np.zeros((n, vocab), np.float32)
  for i, a in enumerate(attrs):
    if a.size:
      np.add.at(tf[i], a, 1.0)
  df = (tf[1:] > 0).sum(0)
  tfidf = tf * np.log((1 + (n - 1)) / (1 + df) + 1)[None].astype(np.float32)
  tfidf /= np.maximum(np.linalg.norm(tfidf, axis=1, keepdims=True), 1e-12)
  d = min(dim, vocab)
  rng = np.random.default_rng(seed)
  # Randomized SVD (Halko et al.): range finder with two power iterations.
  q, _ = np.linalg.qr(tfidf @ rng.standard_normal((vocab, d + 8)).astype(np.float32))
  for _ in range(2):
    q, _ = np.linalg.qr(tfidf @ (tfidf.T @ q))
  u, s, _ = np.linalg.svd(q.T @ tfidf, full_matrices=False)
  out = (q @ u[:, :d]) * s[:d]
  out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
  out[0] = 0
  return out.astype(np.float32)
