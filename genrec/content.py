"""Item content vectors for identifier schemes: any [num_items + 1, d] matrix.

Data sets with only categorical attribute ids (the Amazon 2014 files here)
get a TF-IDF bag of attributes, reduced by a randomized SVD.
"""

import numpy as np


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
    raise ValueError(f'Data set {data.name!r} has no item attributes; pass another '
                     'content_fn (e.g. text embeddings) to the identifier scheme.')
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
