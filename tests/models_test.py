import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genrec import layers, models

CFG = models.TransformerConfig(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                               num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)
MODEL = models.create_model(CFG, jax.random.key(0))


@functools.partial(nnx.jit, static_argnames='deterministic')
def apply(model, enc, dec, deterministic=True, rngs=None):
  return model(enc, dec, deterministic=deterministic, rngs=rngs)


def test_shapes_and_dtype():
  logits = apply(MODEL, jnp.ones((3, 7), jnp.int32), jnp.zeros((3, 4), jnp.int32))
  assert logits.shape == (3, 4, CFG.vocab_size) and logits.dtype == jnp.float32


def test_decoder_is_causal():
  enc = jnp.arange(2, 9)[None]
  a = apply(MODEL, enc, jnp.array([[0, 5, 6, 7]]))
  b = apply(MODEL, enc, jnp.array([[0, 5, 9, 11]]))  # differs from position 2 on
  np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-6)
  assert not np.allclose(a[:, 2:], b[:, 2:])


def test_encoder_padding_is_ignored():
  dec = jnp.array([[0, 5]])
  a = apply(MODEL, jnp.array([[4, 5, 6]]), dec)
  b = apply(MODEL, jnp.array([[4, 5, 6, 0, 0, 0]]), dec)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_is_active_only_in_training():
  model = models.create_model(dataclasses_replace(CFG, dropout_rate=0.5), jax.random.key(0))
  x, y = jnp.ones((2, 5), jnp.int32) * 3, jnp.zeros((2, 2), jnp.int32)
  np.testing.assert_array_equal(apply(model, x, y), apply(model, x, y))
  a = apply(model, x, y, False, nnx.Rngs(dropout=1))
  b = apply(model, x, y, False, nnx.Rngs(dropout=2))
  assert not np.allclose(a, b)


def test_bfloat16_compute_keeps_float32_params():
  model = models.create_model(dataclasses_replace(CFG, dtype='bfloat16'), jax.random.key(0))
  out = apply(model, jnp.ones((1, 4), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  assert out.dtype == jnp.float32
  assert model.embed[...].dtype == jnp.float32
  ref = apply(MODEL, jnp.ones((1, 4), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  np.testing.assert_allclose(out, ref, atol=0.1)


def _t5_bucket(rel: int, bidirectional: bool, num_buckets=32, max_distance=128) -> int:
  """Scalar transcription of T5's `_relative_position_bucket`."""
  ret, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    ret += num_buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


def test_relative_position_buckets_match_t5():
  rel = np.arange(-300, 301)
  for bidi in (True, False):
    expected = [_t5_bucket(int(r), bidi) for r in rel]
    np.testing.assert_array_equal(layers.relative_position_bucket(jnp.asarray(rel), bidi, 32, 128),
                                  expected)


def dataclasses_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


@functools.partial(nnx.jit, static_argnames='beams')
def _incremental(model, enc, dec, beams):
  """Logits of every position via decode_step, with `beams` copies per query."""
  encoded, valid = model.encode(enc)
  cross = model.decoding_context(encoded, valid)
  dec = jnp.repeat(dec, beams, axis=0)
  cache = model.init_self_cache(dec.shape[0], dec.shape[1])
  out = []
  for step in range(dec.shape[1]):
    logits, cache = model.decode_step(dec[:, step], step, cross, valid, cache)
    out.append(logits)
  return jnp.stack(out, axis=1)


def test_cached_decode_steps_equal_full_decoding():
  enc = jnp.array([[4, 5, 6, 0], [7, 8, 9, 10]])
  dec = jnp.array([[0, 5, 6, 7], [0, 11, 3, 2]])
  full = apply(MODEL, enc, dec)
  stepped = _incremental(MODEL, enc, dec, 3)  # beams share the query's encoder cache
  np.testing.assert_allclose(stepped, jnp.repeat(full, 3, axis=0), atol=1e-4)


def test_hash_dropout_masks_are_uniform_independent_and_reproducible():
  shape = (64, 81, 128)
  bits = np.asarray(layers.hash_bits(jax.random.key(3), shape))
  again = np.asarray(layers.hash_bits(jax.random.key(3), shape))
  other = np.asarray(layers.hash_bits(jax.random.key(4), shape))
  np.testing.assert_array_equal(bits, again)
  for rate in (0.1, 0.5):
    threshold = np.uint32(round(rate * 2**32))
    drop, drop_other = bits < threshold, other < threshold
    assert abs(drop.mean() - rate) < 0.005
    # Neighbouring elements, other positions and other keys are uncorrelated.
    for a, b in ((drop[..., 1:], drop[..., :-1]), (drop[:, 1:], drop[:, :-1]),
                 (drop, drop_other)):
      both = (a & b).mean()
      assert abs(both - rate * rate) < 0.005, (rate, both)
  # Every bit of the words is used: each bit position is set half of the time.
  ones = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(0)
  assert np.all(np.abs(ones - 0.5) < 0.01)


def test_dropout_layer_scales_kept_values_and_drops_the_rate():
  drop = layers.Dropout(0.25)
  x = jnp.ones((200, 500))
  y = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs((y == 0).mean() - 0.25) < 0.01
  assert abs(y.mean() - 1.0) < 0.01
  np.testing.assert_array_equal(drop(x, deterministic=True, rngs=None), x)


def test_decoder_only_packed_rows_equal_one_window_per_row():
  """Segments of a packed row see only themselves: the loss of a packed batch
  equals that of the same windows one per row."""
  cfg = dataclasses_replace(CFG, architecture='decoder_only')
  model = models.create_model(cfg, jax.random.key(1))
  windows = [np.array([5, 9, 7, 3, 11, 12]), np.array([4, 8, 6, 2]), np.array([20, 21])]
  weights = [np.r_[0, 0, np.ones(len(w) - 2)] for w in windows]
  row = lambda parts: np.concatenate(parts + [np.zeros(12 - sum(map(len, parts)))])
  packed = {'tokens': row(windows)[None].astype(np.int32),
            'loss_weights': row(weights)[None].astype(np.int32),
            'segment_ids': row([np.full(len(w), i + 1) for i, w in enumerate(windows)])[None]
            .astype(np.int32)}
  single = {'tokens': np.stack([np.r_[np.zeros(12 - len(w)), w] for w in windows]).astype(np.int32),
            'loss_weights': np.stack([np.r_[np.zeros(12 - len(w)), x] for w, x in
                                      zip(windows, weights)]).astype(np.int32)}
  a, _ = model.loss(jax.tree.map(jnp.asarray, packed), deterministic=True)
  b, _ = model.loss(jax.tree.map(jnp.asarray, single), deterministic=True)
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_encoder_decoder_packed_rows_equal_one_example_per_row():
  """Packed prefix examples (features.pack_prefix_arrays) give the loss and
  accuracy of the same examples one per row."""
  from genrec.recommendation import features
  model = models.create_model(CFG, jax.random.key(2))
  hist = [[5, 9, 7, 3, 11, 12], [4, 8], [20, 21, 22, 23], [30], [6, 7, 8, 9, 10, 13, 14, 15]]
  targets = np.array([[40, 41, 42], [43, 44, 45], [46, 47, 48], [49, 50, 51], [52, 53, 54]])
  single = {'encoder_input_tokens': np.array([h + [0] * (8 - len(h)) for h in hist], np.int32),
            'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
            'decoder_target_tokens': targets.astype(np.int32),
            'decoder_loss_weights': np.ones_like(targets, np.int32)}
  packed, info = features.pack_prefix_arrays(single, capacity=10, max_per_row=3)
  assert info['rows'] < len(hist)
  a, ma = model.loss(jax.tree.map(jnp.asarray, packed), deterministic=True)
  b, mb = model.loss(jax.tree.map(jnp.asarray, single), deterministic=True)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  np.testing.assert_allclose(ma['accuracy'], mb['accuracy'])


@pytest.mark.parametrize('from_end', [False, True])
def test_sasrec_packed_rows_equal_one_window_per_row(from_end):
  """SASRec's packed rows (segment ids, positions restarting per window) give
  the loss of the same windows one per row, with positions counted from the
  start or back from the end of each window."""
  cfg = dataclasses_replace(CFG, architecture='sasrec', num_decoder_layers=0, num_items=30,
                            max_len=8, positions_from_end=from_end)
  model = models.create_model(cfg, jax.random.key(2))
  windows = [np.array([5, 9, 7, 3]), np.array([4, 8, 6]), np.array([20, 21])]
  pad = lambda x: np.r_[x, np.zeros(8 - len(x))].astype(np.int32)
  cat = lambda parts: pad(np.concatenate(parts))[None]
  packed = {'items': cat([w[:-1] for w in windows]), 'next_items': cat([w[1:] for w in windows]),
            'segment_ids': cat([np.full(len(w) - 1, i + 1) for i, w in enumerate(windows)]),
            'positions': cat([np.arange(len(w) - 1) for w in windows])}
  single = {'items': np.stack([pad(w[:-1]) for w in windows]),
            'next_items': np.stack([pad(w[1:]) for w in windows])}
  a, _ = model.loss(jax.tree.map(jnp.asarray, packed), deterministic=True)
  b, _ = model.loss(jax.tree.map(jnp.asarray, single), deterministic=True)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  # Same weights, positions counted the other way: another loss.
  other = models.create_model(dataclasses_replace(cfg, positions_from_end=not from_end),
                              jax.random.key(2))
  c, _ = other.loss(jax.tree.map(jnp.asarray, single), deterministic=True)
  assert abs(float(c) - float(b)) > 1e-4


def test_shared_bias_gradient_equals_the_broadcast_sum():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(5, 3, 4, 6)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, 3, 4, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 3, 4, 6)), jnp.float32)
  f = lambda add: jax.grad(lambda a, b: jnp.sum(jnp.sin(add(a, b)) * w), argnums=(0, 1))
  got = f(layers.add_shared_bias)(logits, bias)
  want = f(lambda a, b: a + b)(logits, bias)
  for g, e in zip(got, want):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def _bert_model(model_dir, texts):
  """A BertEncoderDecoder over the checkpoint `model_dir`, its encoder loaded,
  docid token i + 3 embedded as texts[i]'s sentence embedding."""
  from genrec import text_encoder
  cfg = models.TransformerConfig(vocab_size=16, d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                 num_decoder_layers=1, dropout_rate=0.0, dtype='float32',
                                 architecture='bert_encoder_decoder',
                                 encoder_checkpoint=model_dir)
  model = models.create_model(cfg, jax.random.key(0))
  state = nnx.state(model)
  params = nnx.to_pure_dict(state)
  params['bert'] = text_encoder.pretrained_params(model_dir)
  params['embed'] = np.array(params['embed'])
  params['embed'][3:3 + len(texts)] = text_encoder.encode(texts, model_dir)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def test_pretrained_encoder_decoder_starts_as_dense_retrieval(tiny_bert_dir):
  from genrec import text_encoder
  docs = ['boundary layer of a flat plate', 'heat transfer at hypersonic speed',
          'flutter of swept wings']
  queries = ['flat plate boundary layer', 'wing flutter']
  model = _bert_model(tiny_bert_dir, docs)
  vocab = text_encoder.WordPieceVocabulary(tiny_bert_dir)
  enc = np.zeros((2, 12), np.int32)
  for i, q in enumerate(queries):
    ids = vocab.encode(q)
    enc[i, :len(ids)] = ids
  dec = jnp.array([[0, 4, 5], [0, 3, 3]])

  @nnx.jit  # one program each (eager, every op compiles on its own)
  def full_and_stepped(model, enc, dec):
    step_fn, cache = model.beam_search_inputs(enc, 2, 3)
    stepped = []
    for t in range(3):
      logits, cache = step_fn(jnp.repeat(dec[:, t], 2), cache, t)
      stepped.append(logits)
    return model(enc, dec), jnp.stack(stepped, 1), model.decode(*model.encode(enc), dec)
  full, stepped, decoded = full_and_stepped(model, jnp.asarray(enc), dec)
  np.testing.assert_allclose(decoded, full, atol=1e-5)  # decode from encode's states
  # First decoding step: scale x cosine of the query and document embeddings
  # (the model adds [CLS]/[SEP] as the tokenizer does for the encoder).
  dense = text_encoder.encode(queries, tiny_bert_dir) @ text_encoder.encode(
      docs, tiny_bert_dir).T
  np.testing.assert_allclose(np.asarray(full[:, 0, 3:6]) / 20.0, dense, atol=1e-5)
  # Incremental decoding (beams share the query's encoder states and pooled
  # embedding: `decoding_context`, what the host-constrained SEAL search and
  # its export step with too) equals the full pass.
  np.testing.assert_allclose(stepped, jnp.repeat(full, 2, axis=0), atol=1e-4)


def test_pretrained_encoder_width_must_match_d_model(tiny_bert_dir):
  cfg = models.TransformerConfig(vocab_size=16, d_model=64, architecture='bert_encoder_decoder',
                                 encoder_checkpoint=tiny_bert_dir)
  with pytest.raises(ValueError, match='hidden size 32: set d_model = 32'):
    models.abstract_model(cfg)


_ITEM_SID_CONFIGS = {'parallel': models.ItemSidConfig,
                     'autoregressive': models.ItemSidAutoregressiveConfig}


def _item_sid_model(head, seed=0, **kw):
  cfg = _ITEM_SID_CONFIGS[head](d_model=32, num_heads=2, head_dim=16, d_ff=64, num_layers=1,
                                dropout_rate=0.0, vocab_size=128, level_sizes=(8, 8, 3),
                                num_items=40, max_len=8, **kw)
  return models.create_model(cfg, jax.random.key(seed))


def _item_sid_ids(num_items=40, levels=(8, 8, 3), seed=0):
  from genrec.ids import ItemIds
  every = np.stack(np.meshgrid(*map(np.arange, levels), indexing='ij'), -1).reshape(-1, len(levels))
  codes = np.full((num_items + 1, len(levels)), -1, np.int32)
  codes[1:] = np.random.default_rng(seed).permutation(every)[:num_items]  # distinct
  return ItemIds(codes=codes, level_sizes=levels, scheme='test')


@pytest.mark.parametrize('head', ['parallel', 'autoregressive'])
def test_item_sid_packed_rows_equal_one_window_per_row(head):
  """The item-level model's packed rows (segment ids, positions per window)
  give the loss of the same windows one per row, for either head."""
  from genrec.data import windows
  model, ids = _item_sid_model(head, item_id_buckets=41), _item_sid_ids()
  users = [np.array([5, 9, 7, 3]), np.array([4, 8, 6]), np.array([20, 21])]
  packed = windows.sequence_train_arrays(users, ids, 8, item_ids=True)
  single = windows.sequence_train_arrays(users, ids, 8, item_ids=True, packed=False)
  assert len(packed['items']) == 1 and len(single['items']) == 3
  a, _ = model.loss(jax.tree.map(jnp.asarray, models.ItemSidModel.window_arrays(packed, ids)),
                    deterministic=True)
  b, _ = model.loss(jax.tree.map(jnp.asarray, models.ItemSidModel.window_arrays(single, ids)),
                    deterministic=True)
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_item_sid_parallel_scores_are_summed_code_log_probs_over_the_catalog():
  model, ids = _item_sid_model('parallel'), _item_sid_ids()
  history = np.array([[3, 7, 9, 0, 0, 0, 0, 0], [12, 0, 0, 0, 0, 0, 0, 0]], np.int32)
  inputs = models.ItemSidModel.history_features(history, ids.token_table())
  scores = np.asarray(model.score_items(jnp.asarray(inputs), jnp.asarray(ids.token_table())))
  # By hand: the last real position's state, each level's log-softmax, summed.
  states = np.asarray(model.states(jnp.asarray(inputs)))
  for row, last in enumerate((2, 0)):
    logp = np.asarray(model.level_log_probs(jnp.asarray(states[row, last])))  # [L, K]
    want = sum(logp[level, ids.codes[1:, level]] for level in range(3))
    np.testing.assert_allclose(scores[row, 1:], want, rtol=1e-5, atol=1e-5)
    assert scores[row, 0] == -np.inf
  # A padded history equals its unpadded prefix (padding is invisible).
  short = jnp.asarray(inputs[:1, :3])
  np.testing.assert_allclose(model.score_items(short, jnp.asarray(ids.token_table())),
                             scores[:1], rtol=1e-5, atol=1e-5)


def test_item_sid_autoregressive_beam_search_is_exact_and_valid():
  """Trie-constrained beam search over the autoregressive head returns
  distinct existing items, best first, with the log-probabilities that
  scoring each item's codes through the head gives."""
  from genrec import constraints, decoding
  model, ids = _item_sid_model('autoregressive', seed=3), _item_sid_ids()
  history = models.ItemSidModel.history_features(np.array([[3, 7, 9, 0, 0, 0, 0, 0]], np.int32),
                                               ids.token_table())
  trie = constraints.PrefixTrie.from_ids(ids)
  fn, cache = model.beam_search_inputs(jnp.asarray(history), 40, 3)
  seqs, scores = decoding.beam_search(fn, cache, 1, 40, 3, trie.constrain)
  items = ids.tokens_to_items(np.asarray(seqs[0]))
  assert (items > 0).all() and len(set(items.tolist())) == 40
  # Every item's exact log-probability by teacher forcing; the search's beam
  # width covers the catalog, so it must find them all, in order.
  h = model._last_state(jnp.asarray(history))
  table = ids.token_table()[1:]
  logp = jax.nn.log_softmax(model._head_logits(jnp.repeat(h, 40, 0), jnp.asarray(table[:, :2])))
  exact = np.take_along_axis(np.asarray(logp), table[:, :, None], axis=-1)[..., 0].sum(-1)
  np.testing.assert_allclose(np.asarray(scores[0]), exact[items - 1], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.sort(exact)[::-1], exact[items - 1])


def test_item_sid_catalog_loss_is_the_softmax_of_summed_code_logits_over_existing_ids():
  """loss='catalog': the cross-entropy of the next item under
  exp(sum of its code logits) normalized over the catalog, which is what
  score_items ranks by (the per-level normalizers are constant per query)."""
  model, ids = _item_sid_model('parallel', seed=5, loss='catalog'), _item_sid_ids()
  from genrec.data import windows
  arrays = models.ItemSidModel.window_arrays(windows.sequence_train_arrays(
      [np.array([5, 9, 7, 3])], ids, 8, item_ids=True, packed=False), ids)
  batch = jax.tree.map(jnp.asarray, {**arrays, **models.ItemSidModel(
      model.cfg).training_constants(ids)})
  loss, _ = model.loss(batch, deterministic=True)
  table = jnp.asarray(ids.token_table())
  want = []
  for t, nxt in enumerate((9, 7, 3)):
    inputs = jnp.asarray(arrays['inputs'][:, :t + 1])
    scores = np.asarray(model.score_items(inputs, table))[0]  # summed code log-probs
    want.append(-(scores[nxt] - jax.nn.logsumexp(scores[1:])))
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-4)
  with pytest.raises(ValueError, match='needs temperature = 0'):
    models.ItemSidConfig(loss='catalog', temperature=0.07)
  with pytest.raises(TypeError, match='loss'):  # a parallel-head field
    models.ItemSidAutoregressiveConfig(loss='catalog')


def test_item_sid_parallel_beam_search_with_a_full_beam_finds_the_exact_top_k():
  """The parallel head's trie-constrained beam search ranks by the same sum
  of code log-probabilities as score_items: with a beam as wide as the
  catalog it returns the exact ranking; a narrow beam returns existing,
  distinct items."""
  from genrec import constraints, decoding
  model, ids = _item_sid_model('parallel', seed=4), _item_sid_ids()
  history = models.ItemSidModel.history_features(np.array([[3, 7, 9, 0, 0, 0, 0, 0]], np.int32),
                                               ids.token_table())
  exact = np.asarray(model.score_items(jnp.asarray(history), jnp.asarray(ids.token_table())))[0]
  trie = constraints.PrefixTrie.from_ids(ids)
  for beam in (40, 5):
    fn, cache = model.beam_search_inputs(jnp.asarray(history), beam, 3)
    seqs, scores = decoding.beam_search(fn, cache, 1, beam, 3, trie.constrain)
    items = ids.tokens_to_items(np.asarray(seqs[0]))
    assert (items > 0).all() and len(set(items.tolist())) == beam
    np.testing.assert_allclose(np.asarray(scores[0]), exact[items], rtol=1e-4, atol=1e-4)
    if beam == 40:
      np.testing.assert_array_equal(items, np.argsort(-exact[1:])[:40] + 1)


def _random_params(cfg) -> dict:
  """Host parameters of `cfg`'s model's shapes (random; nothing compiled)."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype),
                      nnx.to_pure_dict(nnx.state(models.abstract_model(cfg))))


def test_grow_params_grows_the_named_axes_only():
  """A larger vocabulary grows the token table's rows and the logits
  projection's columns (the mean token), and no other axis of the same size
  (here d_model = d_ff = vocab = 64); hashed item-id rows grow as zeros; the
  grown parameters run in the larger model."""
  small = models.EncoderDecoderConfig(vocab_size=64, d_model=64, num_heads=2, head_dim=8, d_ff=64,
                                      num_encoder_layers=1, num_decoder_layers=1,
                                      dropout_rate=0.0)
  big = models.EncoderDecoderConfig(**{**small.__dict__, 'vocab_size': 128})
  params = _random_params(small)
  grown = models.grow_params(params, big, {'vocab': models.grow_mean(slice(4, 64))})
  np.testing.assert_allclose(grown['embed'][:64], params['embed'])
  np.testing.assert_allclose(grown['embed'][64:], np.broadcast_to(
      params['embed'][4:].mean(0), (64, 64)), rtol=1e-6)
  kernel = grown['logits_dense']['kernel']
  assert kernel.shape == (64, 128)
  np.testing.assert_allclose(kernel[:, 100], params['logits_dense']['kernel'][:, 4:].mean(1),
                             rtol=1e-6)
  others = [(path, a, b) for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params),
                                                  jax.tree.leaves(grown))
            if jax.tree_util.keystr(path) not in ("['embed']", "['logits_dense']['kernel']")]
  assert sum(a.shape[0] == 64 for _, a, _ in others) >= 4  # same-sized axes, left alone
  for path, a, b in others:
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  model = nnx.merge(nnx.split(models.abstract_model(big))[0], grown)
  logits = apply(model, jnp.array([[100, 5, 6]]), jnp.array([[0, 120]]))
  assert logits.shape == (1, 2, 128) and np.isfinite(np.asarray(logits)).all()
  with pytest.raises(ValueError, match="grows along its 'vocab' axis"):
    models.grow_params(params, big, {'table_rows': models.grow_zeros})

  item_sid = models.ItemSidConfig(d_model=16, num_heads=2, head_dim=8, d_ff=32, num_layers=1,
                                  vocab_size=32, level_sizes=(8, 8), num_items=20, max_len=4,
                                  item_id_buckets=21)
  params = _random_params(item_sid)
  grown = models.grow_params(
      params, models.ItemSidConfig(**{**item_sid.__dict__, 'item_id_buckets': 25}),
      {'table_rows': models.grow_zeros})
  assert grown['id_embed'].shape == (25, 16) and not grown['id_embed'][21:].any()
  np.testing.assert_array_equal(grown['id_embed'][:21], params['id_embed'])
