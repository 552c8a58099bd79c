"""Collaborative indexing (Hua et al., "How to Index Item IDs"): recursive
spectral clustering of the item co-occurrence graph, so that items consumed
together share ID prefixes."""

import dataclasses

import numpy as np
import scipy.sparse as sp
from scipy.sparse import linalg as sp_linalg

from genrec.ids.base import IdScheme, ItemIds
from genrec.ids.kmeans import _finish, kmeans, split_levels


def cooccurrence(data, window: int = 3) -> sp.csr_matrix:
  """Symmetric counts of item pairs within `window` positions of each other in
  the training parts of the sequences; [num_items + 1, num_items + 1]."""
  rows, cols = [], []
  for seq in data.train_sequences():
    for gap in range(1, window + 1):
      rows.append(seq[:-gap])
      cols.append(seq[gap:])
  r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
  c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
  n = data.num_items + 1
  a = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr()
  a = a + a.T
  a.setdiag(0)
  a.eliminate_zeros()
  return a


def spectral_embedding(adjacency: sp.spmatrix, dim: int, seed: int) -> np.ndarray:
  """Top eigenvectors of the normalized adjacency D^-1/2 (A + I) D^-1/2, rows
  L2-normalized (Ng-Jordan-Weiss); the self loops keep isolated items defined."""
  n = adjacency.shape[0]
  a = adjacency + sp.identity(n, format='csr')
  d = np.asarray(a.sum(1)).ravel()
  inv_sqrt = sp.diags(1.0 / np.sqrt(d))
  m = inv_sqrt @ a @ inv_sqrt
  k = min(dim, n - 1)
  if n <= 2000:
    _, vecs = np.linalg.eigh(m.toarray())
    vecs = vecs[:, -k:]
  else:
    v0 = np.random.default_rng(seed).standard_normal(n)
    _, vecs = sp_linalg.eigsh(m, k=k, which='LA', v0=v0)
  return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class CollaborativeIds(IdScheme):
  """Level by level, each group of items is split into `branching` clusters by
  spectral clustering of its co-occurrence subgraph.

  Attributes:
    num_levels: levels before the collision level.
    branching: clusters per node.
    window: co-occurrence window in the training sequences.
    dedup: append the collision level.
    seed: seeds the eigensolver and k-means.
  """
  num_levels: int = 2
  branching: int = 32
  window: int = 3
  dedup: bool = True
  seed: int = 0

  @property
  def name(self) -> str:
    return f'collaborative-{self.num_levels}x{self.branching}-w{self.window}-s{self.seed}'

  def fit(self, data) -> ItemIds:
    a = cooccurrence(data, self.window)[1:, 1:].tocsr()

    def cluster(members, seed):
      emb = spectral_embedding(a[members][:, members], self.branching, self.seed + seed)
      return kmeans(emb, self.branching, seed=self.seed + seed)[1]

    codes = split_levels(data.num_items, self.num_levels, self.branching, cluster)
    return _finish(codes, (self.branching,) * self.num_levels, self.name, self.dedup)
