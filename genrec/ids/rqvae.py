"""RQ-VAE semantic IDs (TIGER): an MLP autoencoder whose latent is quantized by
`num_levels` residual codebooks; an item's ID is its codes, level by level."""

import dataclasses
import time

from absl import logging
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import optax

from genrec.ids import content
from genrec.ids.base import IdScheme, ItemIds
from genrec.ids.kmeans import (ContentFn, _finish, kmeans, squared_distances,
                               uniform_last_level)


class Mlp(nnx.Module):

  def __init__(self, dims: tuple[int, ...], *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.silu(x)
    return x


class RQVAE(nnx.Module):
  """Encoder -> residual quantization (L codebooks of K codes) -> decoder."""

  def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int,
               num_levels: int, codebook_size: int, *, rngs: nnx.Rngs):
    self.encoder = Mlp((in_dim, *hidden, latent_dim), rngs=rngs)
    self.decoder = Mlp((latent_dim, *reversed(hidden), in_dim), rngs=rngs)
    self.codebooks = nnx.Param(
        jax.random.normal(rngs.params(), (num_levels, codebook_size, latent_dim)) * 0.1)

  def quantize(self, z: jax.Array):
    """z [n, d] -> (codes [n, L], quantized [n, d], codebook loss, commitment loss)."""
    residual, quantized = z, jnp.zeros_like(z)
    codes, codebook_loss, commit_loss = [], 0.0, 0.0
    for level in range(self.codebooks.shape[0]):
      book = self.codebooks[level]  # [K, d]
      dist = ((residual[:, None, :] - book[None]) ** 2).sum(-1)  # [n, K]
      idx = dist.argmin(-1)
      e = book[idx]
      codebook_loss += jnp.mean((jax.lax.stop_gradient(residual) - e) ** 2)
      commit_loss += jnp.mean((residual - jax.lax.stop_gradient(e)) ** 2)
      quantized = quantized + e
      residual = residual - e
      codes.append(idx)
    return jnp.stack(codes, -1), quantized, codebook_loss, commit_loss

  def __call__(self, x: jax.Array, beta: float):
    z = self.encoder(x)
    codes, quantized, cb_loss, commit_loss = self.quantize(z)
    z_q = z + jax.lax.stop_gradient(quantized - z)  # straight-through estimator
    recon = jnp.mean(((self.decoder(z_q) - x) ** 2).sum(-1))
    return recon + cb_loss + beta * commit_loss, (recon, codes)


@dataclasses.dataclass(frozen=True)
class RQVAEIds(IdScheme):
  """TIGER's RQ-VAE: 3 levels x 256 codes, beta 0.25, k-means codebook init,
  straight-through gradients, dead codes re-seeded from the batch.

  Attributes:
    num_levels, codebook_size: the semantic levels and their codes.
    latent_dim, hidden: autoencoder sizes.
    beta: commitment weight.
    num_steps, batch_size, learning_rate: AdamW training.
    dead_code_every: steps between re-seeding codes unused in that window.
    content_fn: data -> float [num_items + 1, d] item content.
    sinkhorn_last_level: balanced last-level assignment (LC-Rec).
    dedup: append the collision level.
    seed: seeds init and batches.
  """
  num_levels: int = 3
  codebook_size: int = 256
  latent_dim: int = 32
  hidden: tuple[int, ...] = (512, 256, 128)
  beta: float = 0.25
  num_steps: int = 3000
  batch_size: int = 1024
  learning_rate: float = 1e-3
  dead_code_every: int = 200
  content_fn: ContentFn = content.item_content
  sinkhorn_last_level: bool = False
  dedup: bool = True
  seed: int = 0

  @property
  def name(self) -> str:
    sk = '-sinkhorn' if self.sinkhorn_last_level else ''
    return (f'rqvae-{self.num_levels}x{self.codebook_size}{sk}-s{self.seed}'
            f'{content.tag(self.content_fn)}')

  def fit(self, data) -> ItemIds:
    t0 = time.time()
    x_all = np.asarray(self.content_fn(data), np.float32)[1:]
    n = len(x_all)
    model = RQVAE(x_all.shape[1], tuple(self.hidden), self.latent_dim, self.num_levels,
                  self.codebook_size, rngs=nnx.Rngs(self.seed))
    # k-means initialization of every level on the initial encoder's residuals.
    residual = np.asarray(jax.jit(lambda m, x: m.encoder(x))(model, x_all), np.float64)
    books = np.zeros(model.codebooks.shape, np.float32)
    for level in range(self.num_levels):
      cent, assign = kmeans(residual, self.codebook_size, seed=self.seed + level, num_iters=20)
      books[level, :len(cent)] = cent
      residual = residual - cent[assign]
    model.codebooks[...] = jnp.asarray(books)

    optimizer = nnx.Optimizer(model, optax.adamw(self.learning_rate), wrt=nnx.Param)
    beta = self.beta

    @nnx.jit
    def step(model, optimizer, x):
      (loss, (recon, codes)), grads = nnx.value_and_grad(
          lambda m: m(x, beta), has_aux=True)(model)
      optimizer.update(model, grads)
      return loss, recon, codes

    rng = np.random.default_rng(self.seed)
    bs = min(self.batch_size, n)
    usage = np.zeros((self.num_levels, self.codebook_size), np.int64)
    reseeded = 0
    for i in range(self.num_steps):
      batch = x_all[rng.choice(n, bs, replace=False)]
      loss, recon, codes = step(model, optimizer, jnp.asarray(batch))
      codes = np.asarray(codes)
      for level in range(self.num_levels):
        usage[level] += np.bincount(codes[:, level], minlength=self.codebook_size)
      if (i + 1) % self.dead_code_every == 0:
        reseeded += self._reseed_dead_codes(model, batch, usage, rng)
        usage[:] = 0
      if (i + 1) % max(1, self.num_steps // 10) == 0:
        logging.info('RQ-VAE step %d/%d loss %.4f recon %.4f', i + 1, self.num_steps,
                     float(loss), float(recon))

    codes, recon = self._encode_all(model, x_all)
    info = {'reconstruction_mse': recon, 'dead_codes_reseeded': int(reseeded),
            'fit_seconds': round(time.time() - t0, 1)}
    logging.info('RQ-VAE fitted: %s', info)
    return _finish(codes, (self.codebook_size,) * self.num_levels, self.name, self.dedup,
                   info)

  def _reseed_dead_codes(self, model, batch, usage, rng) -> int:
    """Codes unused over the window move onto residuals of random batch items."""
    dead = usage == 0
    if not dead.any():
      return 0
    z = np.asarray(model.encoder(jnp.asarray(batch)), np.float32)
    books = np.asarray(model.codebooks[...]).copy()
    residual = z
    for level in range(self.num_levels):
      idx = np.flatnonzero(dead[level])
      if idx.size:
        books[level, idx] = residual[rng.choice(len(residual), idx.size)]
      dist = squared_distances(residual, books[level])
      residual = residual - books[level][dist.argmin(-1)]
    model.codebooks[...] = jnp.asarray(books)
    return int(dead.sum())

  def _encode_all(self, model, x_all) -> tuple[np.ndarray, float]:
    z = np.asarray(jax.jit(lambda m, x: m.encoder(x))(model, x_all), np.float64)
    books = np.asarray(model.codebooks[...], np.float64)
    codes = np.zeros((len(z), self.num_levels), np.int32)
    residual, quantized = z, np.zeros_like(z)
    for level in range(self.num_levels):
      dist = squared_distances(residual, books[level])
      if self.sinkhorn_last_level and level == self.num_levels - 1:
        codes[:, level] = uniform_last_level(codes[:, :level], dist)
      else:
        codes[:, level] = dist.argmin(-1)
      quantized += books[level][codes[:, level]]
      residual = residual - books[level][codes[:, level]]
    recon = jax.jit(lambda m, q: m.decoder(q))(model, jnp.asarray(quantized, jnp.float32))
    mse = float(np.mean(((np.asarray(recon) - x_all) ** 2).sum(-1)))
    return codes, mse
