"""Inference from a model config and parameters alone (no optimizer): beam
search over identifiers (optionally constrained), one-pass item scoring, and
params-only restore from any genrec checkpoint.

`Trainer` extends `Predictor` with the optimizer and the train step, so
training-time evaluation and `infer` run the same jitted functions.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from genrec import checkpoints, constraints, decoding, models, partitioning


class Predictor:
  """The model's graph, its parameter shardings and the jitted predict functions."""

  def __init__(self, config: models.ModelConfig, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.graphdef, abstract = nnx.split(models.abstract_model(config))
    self.param_specs = partitioning.param_partition_specs(abstract)
    self.param_shardings = partitioning.named_shardings(self.param_specs, mesh)
    partitioning.check_divisible(nnx.to_pure_dict(abstract), self.param_shardings)
    self.abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nnx.to_pure_dict(abstract), self.param_shardings)
    self._predict, self._rank, self._host_decode, self._sample = {}, {}, {}, {}

  def restore_params(self, checkpoint_dir: str, step: int | None = None):
    """The parameters of a genrec checkpoint (its optimizer state is not read).

    Args:
      checkpoint_dir: a run's checkpoints/ folder (step folders inside).
      step: which step; default the latest.

    Returns:
      (params sharded on this predictor's mesh, the step).

    Raises:
      ValueError: naming the folder, when there is no checkpoint or it does
        not hold parameters of this model.
    """
    return checkpoints.restore_params(checkpoint_dir, self.abstract_params, step)

  def predict(self, params, encoder_input_tokens: jax.Array, beam_size: int,
              num_steps: int, trie: constraints.PrefixTrie | None = None):
    """Beam search: [batch, s] -> (tokens [batch, beam, num_steps], scores), for
    any generative model (its `beam_search_inputs`).

    With `trie`, only identifiers in it are decoded (exact, on the device).
    """
    key = (beam_size, num_steps, trie is None)
    if key not in self._predict:
      fn = functools.partial(self._predict_fn, beam_size=beam_size, num_steps=num_steps)
      self._predict[key] = jax.jit(
          fn, in_shardings=(self.param_shardings,
                            partitioning.batch_sharding(self.mesh),
                            partitioning.replicated(self.mesh)),
          out_shardings=(partitioning.batch_sharding(self.mesh, 3),
                         partitioning.batch_sharding(self.mesh, 1)))
    return self._predict[key](params, encoder_input_tokens, trie)

  def _predict_fn(self, params, encoder_input_tokens, trie, *, beam_size, num_steps):
    model = nnx.merge(self.graphdef, params)
    tokens_to_logits, cache = model.beam_search_inputs(encoder_input_tokens, beam_size,
                                                       num_steps)
    return decoding.beam_search(tokens_to_logits, cache, encoder_input_tokens.shape[0],
                                beam_size, num_steps, None if trie is None else trie.constrain)

  def sample(self, params, encoder_input_tokens: jax.Array, num_samples: int,
             num_steps: int, rng: jax.Array, top_k: int = 10, temperature: float = 1.0):
    """Top-k sampling (`decoding.sample`): [batch, s] -> (tokens [batch,
    num_samples, num_steps], their log-probabilities [batch, num_samples]).
    The same `rng` gives the same samples."""
    key = (num_samples, num_steps, top_k, temperature)
    if key not in self._sample:
      def fn(params, inputs, rng):
        model = nnx.merge(self.graphdef, params)
        tokens_to_logits, cache = model.beam_search_inputs(inputs, num_samples, num_steps)
        return decoding.sample(tokens_to_logits, cache, inputs.shape[0], num_samples,
                               num_steps, rng, top_k, temperature)
      self._sample[key] = jax.jit(
          fn, in_shardings=(self.param_shardings, partitioning.batch_sharding(self.mesh),
                            partitioning.replicated(self.mesh)),
          out_shardings=(partitioning.batch_sharding(self.mesh, 3),
                         partitioning.batch_sharding(self.mesh, 1)))
    return self._sample[key](params, encoder_input_tokens, rng)

  def predict_host_constrained(self, params, encoder_input_tokens: jax.Array, beam_size: int,
                               num_steps: int, allowed_fn: decoding.HostAllowedFn
                               ) -> decoding.Beams:
    """`predict` with a constraint that lives on the host (e.g. an FM-index,
    `fm_index.NGramConstraint`): `decoding.host_constrained_beam_search` over
    one jitted `host_decode_start` and one jitted `host_decode_step` (the
    functions a SEAL export serializes). Returns the final beams, with each
    token's log-probability."""
    key = (beam_size, num_steps)
    if key not in self._host_decode:
      def start(params, inputs):
        return host_decode_start(nnx.merge(self.graphdef, params), inputs, beam_size, num_steps)

      def step(params, beams, cross, valid, allowed, step):
        return host_decode_step(nnx.merge(self.graphdef, params), beams, cross, valid, allowed,
                                step)
      self._host_decode[key] = jax.jit(start), jax.jit(step)
    start, step = self._host_decode[key]
    beams, cross, valid = start(params, encoder_input_tokens)
    return decoding.host_constrained_beam_search(
        lambda beams, allowed, s: step(params, beams, cross, valid, allowed, s), beams,
        num_steps, allowed_fn)

  @property
  def scores_items(self) -> bool:
    """Whether the model ranks the catalog in one pass (`rank_items`) rather
    than decoding identifiers (`predict`)."""
    return self.config.scores_items

  def rank_items(self, params, inputs: jax.Array, k: int, with_scores: bool = False,
                 catalog: jax.Array | None = None):
    """Item-scoring models: [batch, s, ...] -> the top-k item ids [batch, k],
    best first (and their scores [batch, k] with `with_scores`). `catalog`:
    what models that score items from their identifiers read of every item
    (`ItemSidParallel`: the token table [items + 1, L])."""
    key = (k, catalog is None)
    if key not in self._rank:
      def fn(params, inputs, catalog):
        model = nnx.merge(self.graphdef, params)
        scores = model.score_items(inputs) if catalog is None else model.score_items(
            inputs, catalog)
        scores, items = jax.lax.top_k(scores, k)
        return items.astype(jnp.int32), scores.astype(jnp.float32)
      rows = partitioning.batch_sharding(self.mesh)
      self._rank[key] = jax.jit(
          fn, in_shardings=(self.param_shardings, rows, partitioning.replicated(self.mesh)),
          out_shardings=(rows, rows))
    items, scores = self._rank[key](params, inputs, catalog)
    return (items, scores) if with_scores else items


def decode_items(model, tokens: jax.Array, trie: constraints.PrefixTrie, leaf_item: jax.Array,
                 beam_size: int, k: int, constrained: bool = True,
                 top_k: decoding.TopK = jax.lax.top_k) -> tuple[jax.Array, jax.Array]:
  """All on the device: beam search over identifiers (constrained to `trie`'s
  unless `constrained` is False), then identifiers -> item ids by walking the
  trie (`leaf_item`: `constraints.leaf_items`). Returns (items int32 [b, k],
  0 where a beam is not an identifier; scores float32 [b, k]), best first."""
  tokens_to_logits, cache = model.beam_search_inputs(tokens, beam_size, trie.num_levels)
  seqs, scores = decoding.beam_search(tokens_to_logits, cache, tokens.shape[0], beam_size,
                                      trie.num_levels, trie.constrain if constrained else None,
                                      top_k)
  items = constraints.trie_tokens_to_items(trie, leaf_item, seqs)
  return items[:, :k], scores[:, :k].astype(jnp.float32)


def host_decode_start(model, inputs: jax.Array, beam_size: int, num_steps: int):
  """The start of a host-constrained beam search of an encoder-decoder: the
  encoder runs once per query. Returns (`decoding.Beams` with the empty
  self-attention cache, the model's `decoding_context` (the cross-attention
  keys/values per decoder layer; with a pretrained encoder, also the pooled
  query embedding), the input mask [batch, s])."""
  encoded, valid = model.encode(inputs)
  cache = model.init_self_cache(inputs.shape[0] * beam_size, num_steps)
  return (decoding.init_beams(inputs.shape[0], beam_size, num_steps, cache),
          model.decoding_context(encoded, valid), valid)


def host_decode_step(model, beams: decoding.Beams, cross, valid: jax.Array,
                     allowed: jax.Array, step) -> decoding.Beams:
  """One `decoding.constrained_step` of the model (`step` may be traced)."""
  return decoding.constrained_step(
      lambda tokens, cache, s: model.decode_step(tokens, s, cross, valid, cache), beams,
      allowed, step)
