"""Beam search over fixed-length identifiers: pure, jittable, cached, with a
constraint hook.

Identifiers have a small fixed length (the number of levels), so the steps
are unrolled, every beam stays alive to the end and no end-of-sequence token
is needed: a finished identifier is simply `num_steps` tokens long.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Cache = Any  # a pytree whose leaves are [batch * beam, ...] (per-beam state)
# (tokens [batch * beam] at position `step` of the decoder input, cache, step)
#   -> (logits [batch * beam, vocab] of the token at position `step`, cache)
TokensToLogits = Callable[[jax.Array, Cache, int], tuple[jax.Array, Cache]]
# (sequences [batch, beam, num_steps], step, log_probs [batch, beam, vocab]) ->
# log_probs with disallowed tokens set to -inf. Positions >= step of
# `sequences` are zeros.
ConstrainFn = Callable[[jax.Array, int, jax.Array], jax.Array]
# (values [..., n], k) -> (the k largest values [..., k], their indices), best
# first, ties to the lower index: `jax.lax.top_k` or `sort_top_k`.
TopK = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def sort_top_k(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` as one two-key sort (same values, indices and tie order).

  `lax.top_k` lowers to `chlo.top_k`, which StableHLO serializes as a newer
  composite op than older consumers read (TensorFlow's XlaCallModule, hence
  TF Serving); a sort is plain StableHLO that every consumer reads.
  """
  index = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  negated, index = jax.lax.sort((-values, index), dimension=values.ndim - 1, num_keys=2)
  return -negated[..., :k], index[..., :k]


def _reorder(cache: Cache, parent: jax.Array) -> Cache:
  """Gathers every cache leaf's rows by beam parent, within each query."""
  batch, beam = parent.shape

  def gather(x):
    x = x.reshape(batch, beam, *x.shape[1:])
    idx = parent.reshape(batch, beam, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1).reshape(batch * beam, *x.shape[2:])
  return jax.tree.map(gather, cache)


def beam_search(tokens_to_logits: TokensToLogits, cache: Cache, batch_size: int,
                beam_size: int, num_steps: int, constrain_fn: ConstrainFn | None = None,
                top_k: TopK = jax.lax.top_k) -> tuple[jax.Array, jax.Array]:
  """Finds the `beam_size` most likely token sequences of length `num_steps`.

  Args:
    tokens_to_logits: the model's next-token logits for a batch of beams,
      reading and updating a per-beam cache (e.g. self-attention keys/values).
    cache: the initial per-beam cache (leaves [batch * beam, ...]); state shared
      by a query's beams (the encoder's keys/values) belongs in the closure.
    batch_size: number of queries.
    beam_size: beams kept per query (= the number of results returned).
    num_steps: identifier length.
    constrain_fn: optional hook that masks disallowed tokens at every step
      (e.g. `constraints.PrefixTrie.constrain`).
    top_k: the selection of the best continuations (`sort_top_k` for
      artifacts that older StableHLO consumers read).

  Returns:
    sequences int32 [batch, beam, num_steps] and their total log-probabilities
    float32 [batch, beam], best first. A beam whose score is -inf found no
    allowed continuation (fewer valid identifiers than beams).
  """
  seqs, scores = _init(batch_size, beam_size, num_steps)
  for step in range(num_steps):
    logits, cache = tokens_to_logits(_previous(seqs, step), cache, step)
    log_probs = _log_probs(logits, batch_size, beam_size)
    if constrain_fn is not None:
      log_probs = constrain_fn(seqs, step, log_probs)
    seqs, scores, cache = _select(seqs, scores, log_probs, cache, step, top_k)
  return seqs, scores


def sample(tokens_to_logits: TokensToLogits, cache: Cache, batch_size: int,
           num_samples: int, num_steps: int, rng: jax.Array, top_k: int = 10,
           temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Draws `num_samples` independent sequences per query by top-k sampling
  (each token from the `top_k` most likely, renormalized, at `temperature`).

  The samples of a query are rows of the same per-beam cache layout as
  `beam_search` (`beam_size` = `num_samples`), so any model's
  `beam_search_inputs` serves. Different samples of a query may coincide.

  Returns:
    sequences int32 [batch, num_samples, num_steps] and each one's total
    log-probability under the model (untruncated, temperature 1) float32
    [batch, num_samples], in the order drawn.
  """
  if top_k < 1 or temperature <= 0:
    raise ValueError(f'sample: top_k must be >= 1 and temperature > 0, got top_k={top_k}, '
                     f'temperature={temperature}.')
  seqs = jnp.zeros((batch_size, num_samples, num_steps), jnp.int32)
  scores = jnp.zeros((batch_size, num_samples), jnp.float32)
  for step in range(num_steps):
    logits, cache = tokens_to_logits(_previous(seqs, step), cache, step)
    log_probs = _log_probs(logits, batch_size, num_samples)
    # Draw among the k best only: k random numbers a row instead of one per
    # vocabulary entry (those dominated XLA:CPU's time and compile).
    best, index = jax.lax.top_k(log_probs, min(top_k, log_probs.shape[-1]))
    choice = jax.random.categorical(jax.random.fold_in(rng, step), best / temperature)
    token = jnp.take_along_axis(index, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)
    scores += jnp.take_along_axis(best, choice[..., None], axis=-1)[..., 0]
    seqs = seqs.at[:, :, step].set(token)
  return seqs, scores


def _init(batch_size: int, beam_size: int, num_steps: int) -> tuple[jax.Array, jax.Array]:
  seqs = jnp.zeros((batch_size, beam_size, num_steps), jnp.int32)
  # Only beam 0 is live at the start, so the first step does not pick the same
  # token beam_size times.
  scores = jnp.full((batch_size, beam_size), -jnp.inf).at[:, 0].set(0.0)
  return seqs, scores


def _previous(seqs: jax.Array, step: int) -> jax.Array:
  """[batch * beam] the decoder input at `step` (0, the start token, at step 0)."""
  prev = seqs[:, :, step - 1] if step else jnp.zeros(seqs.shape[:2], jnp.int32)
  return prev.reshape(-1)


def _log_probs(logits: jax.Array, batch_size: int, beam_size: int) -> jax.Array:
  """[batch * beam, vocab] logits -> float32 log-probabilities [batch, beam, vocab]."""
  return jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beam_size, -1)


def _best(scores, log_probs, top_k: TopK = jax.lax.top_k):
  """The best beam_size continuations: (scores, parent beam, token, index into
  the flattened [batch, beam * vocab] candidates), each [batch, beam]."""
  batch_size, beam_size, vocab = log_probs.shape
  candidates = (scores[:, :, None] + log_probs).reshape(batch_size, beam_size * vocab)
  scores, flat = top_k(candidates, beam_size)
  return scores, flat // vocab, (flat % vocab).astype(jnp.int32), flat


def _select(seqs, scores, log_probs, cache, step: int, top_k: TopK = jax.lax.top_k):
  """Keeps the best beam_size continuations; reorders sequences and cache."""
  scores, parent, token, _ = _best(scores, log_probs, top_k)
  seqs = jnp.take_along_axis(seqs, parent[:, :, None], axis=1)
  seqs = seqs.at[:, :, step].set(token)
  if step + 1 < seqs.shape[-1]:
    cache = _reorder(cache, parent)
  return seqs, scores, cache


# (sequences int32 [batch, beam, step] so far, on the host) -> bool [batch, beam,
# vocab]: the tokens each beam may take next.
HostAllowedFn = Callable[[np.ndarray], np.ndarray]


class Beams(NamedTuple):
  """The state of a host-constrained beam search (leading dims [batch, beam])."""
  sequences: jax.Array  # int32 [batch, beam, num_steps]; zeros from the current step on
  scores: jax.Array  # float32 [batch, beam]: total log-probabilities
  token_log_probs: jax.Array  # float32 [batch, beam, num_steps]: each token's log-prob
  cache: Cache  # per-beam decoder state, leaves [batch * beam, ...]


def init_beams(batch_size: int, beam_size: int, num_steps: int, cache: Cache) -> Beams:
  seqs, scores = _init(batch_size, beam_size, num_steps)
  return Beams(seqs, scores, jnp.zeros(seqs.shape, jnp.float32), cache)


def constrained_step(tokens_to_logits: TokensToLogits, beams: Beams, allowed: jax.Array,
                     step) -> Beams:
  """One step of beam search with the tokens each beam may take given
  (`allowed` bool [batch, beam, vocab]). Jittable with `step` traced (an
  int32 scalar), so one compiled step serves every position;
  `tokens_to_logits` must accept a traced step then.

  Besides the sequences and scores it keeps each chosen token's
  log-probability (the unconstrained model's: the mask only removes
  continuations), which SEAL's scorer reads for every prefix of a decoded
  n-gram.
  """
  seqs = beams.sequences
  batch_size, beam_size, _ = seqs.shape
  prev = jax.lax.dynamic_index_in_dim(seqs, jnp.maximum(step - 1, 0), axis=2, keepdims=False)
  prev = jnp.where(step > 0, prev, 0).reshape(-1)  # the start token 0 at step 0
  logits, cache = tokens_to_logits(prev, beams.cache, step)
  log_probs = jnp.where(allowed, _log_probs(logits, batch_size, beam_size), -jnp.inf)
  scores, parent, token, flat = _best(beams.scores, log_probs)
  chosen = jnp.take_along_axis(log_probs.reshape(batch_size, -1), flat, axis=1)

  def follow(x, value):  # each beam continues its parent's row, plus this step's value
    return jnp.take_along_axis(x, parent[:, :, None], axis=1).at[:, :, step].set(value)
  return Beams(follow(seqs, token), scores, follow(beams.token_log_probs, chosen),
               _reorder(cache, parent))


# (beams, allowed bool [batch, beam, vocab], step) -> the beams after `step`:
# `constrained_step` with the model bound (jitted), or an exported one.
StepFn = Callable[[Beams, np.ndarray, int], Beams]


def host_constrained_beam_search(step_fn: StepFn, beams: Beams, num_steps: int,
                                 allowed_fn: HostAllowedFn) -> Beams:
  """Beam search whose constraint is computed on the host at every step.

  For constraints that live in host data structures (e.g. an FM-index over a
  corpus, `genrec.fm_index.NGramConstraint`). The boundary is explicit and
  cheap: per step the current sequences go to the host, `allowed_fn` answers
  for all beams at once, and one device call (`step_fn`: the model's next
  token logits, the mask and the selection) advances every beam. In a
  multi-process job each process answers for its own rows.

  Args:
    step_fn: see `StepFn`.
    beams: from `init_beams` (with the model's initial cache).
    num_steps: tokens to decode.
    allowed_fn: see `HostAllowedFn`.

  Returns:
    The final beams, best first per query; a beam whose score is -inf found
    no allowed continuation.
  """
  for step in range(num_steps):
    seqs = beams.sequences
    allowed = allowed_fn(_process_rows(seqs)[:, :, :step])
    if isinstance(seqs, jax.Array) and not seqs.is_fully_addressable:
      # Several processes: each answered for its own rows; one global mask.
      allowed = jax.make_array_from_process_local_data(seqs.sharding, allowed,
                                                       (*seqs.shape[:2], allowed.shape[-1]))
    beams = step_fn(beams, allowed, step)
  return beams


def _process_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded array, in order (all of it in a
  single-process job): what `jax.make_array_from_process_local_data` takes
  back."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  shards = {}
  for shard in x.addressable_shards:  # one per distinct row block (replicas repeat)
    shards.setdefault(shard.index[0].start or 0, shard)
  return np.concatenate([np.asarray(shards[start].data) for start in sorted(shards)])
