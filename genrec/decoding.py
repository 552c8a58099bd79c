"""Beam search over fixed-length identifiers: pure, jittable, with a constraint hook."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# (sequences [batch * beam, num_steps], step) -> logits [batch * beam, vocab] of
# the token at position `step` (positions > step of `sequences` are zeros).
TokensToLogits = Callable[[jax.Array, int], jax.Array]
# (sequences [batch, beam, num_steps], step, log_probs [batch, beam, vocab]) ->
# log_probs with disallowed tokens set to -inf.
ConstrainFn = Callable[[jax.Array, int, jax.Array], jax.Array]


def beam_search(tokens_to_logits: TokensToLogits, batch_size: int, beam_size: int,
                num_steps: int, constrain_fn: ConstrainFn | None = None
                ) -> tuple[jax.Array, jax.Array]:
  """Finds the `beam_size` most likely token sequences of length `num_steps`.

  Identifiers have a small fixed length, so the steps are unrolled and every
  beam stays alive to the end (no end-of-sequence handling is needed).

  Args:
    tokens_to_logits: the model's next-token logits for a batch of beams.
    batch_size: number of queries.
    beam_size: beams kept per query (= the number of results returned).
    num_steps: identifier length.
    constrain_fn: optional hook that masks disallowed tokens at every step.

  Returns:
    sequences int32 [batch, beam, num_steps] and their total log-probabilities
    float32 [batch, beam], best first.
  """
  seqs = jnp.zeros((batch_size, beam_size, num_steps), jnp.int32)
  # Only beam 0 is live at the start, so the first step does not pick the same
  # token beam_size times.
  scores = jnp.full((batch_size, beam_size), -jnp.inf).at[:, 0].set(0.0)
  for step in range(num_steps):
    logits = tokens_to_logits(seqs.reshape(batch_size * beam_size, num_steps), step)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(
        batch_size, beam_size, vocab)  # [batch, beam, vocab]
    if constrain_fn is not None:
      log_probs = constrain_fn(seqs, step, log_probs)
    candidates = (scores[:, :, None] + log_probs).reshape(batch_size, beam_size * vocab)
    scores, flat = jax.lax.top_k(candidates, beam_size)  # [batch, beam]
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(seqs, parent[:, :, None], axis=1)
    seqs = seqs.at[:, :, step].set(token)
  return seqs, scores
