import dataclasses

import jax
from flax import nnx
import numpy as np
import pytest

from conftest import tiny_encoder_decoder
from genrec import fm_index, partitioning, seal, trainer
from genrec.retrieval import seal_method, seq2seq


def test_seal_targets_are_corpus_ngrams(tc):
  a = seal_method.examples(tc, seal_method.SealTasks(ngram_len=4), 'train', 16, seed=0)
  index = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
  for t in a['decoder_target_tokens']:
    assert index.count(t[t > 0].tolist()) > 0


def test_prefix_ngrams_keep_the_best_score_and_stop_at_dead_beams():
  seqs = np.array([[5, 6, 7], [5, 6, 8], [9, 0, 0]])
  logp = np.log([[.5, .5, .5], [.8, .25, .5], [.5, 1, 1]])
  logp[2, 1] = -np.inf
  g = seal.prefix_ngrams(seqs, logp, min_len=1)
  assert set(g) == {(5,), (5, 6), (5, 6, 7), (5, 6, 8), (9,)}
  assert g[(5,)] == pytest.approx(np.log(.8)) and g[(5, 6)] == pytest.approx(np.log(.25))
  assert set(seal.prefix_ngrams(seqs, logp, min_len=2)) == {(5, 6), (5, 6, 7), (5, 6, 8)}


def test_seal_scorer_formula_and_coverage():
  # Docs: 0 = [3 4 5 6], 1 = [3 4 7], 2 = [7 7 8].
  index = fm_index.FMIndex.build([[3, 4, 5, 6], [3, 4, 7], [7, 7, 8]], 10)
  total = 10
  scorer = seal_method.SealScorer(alpha=1.0, beta=0.5)
  grams = {(3, 4): np.log(0.6), (5, 6): np.log(0.3), (4,): np.log(0.9), (8,): np.log(1e-4)}
  w = scorer.weights(grams, index)
  p = 2 / total
  assert w[(3, 4)] == pytest.approx(np.log(0.6 * (1 - p) / (p * 0.4)))
  assert (8,) not in w  # the model wants it less than its corpus frequency: w = 0
  docs, scores = scorer.rank(grams, index, k=10)
  # Best first: (4), then (3 4) with token 4 already covered (cover 1 - .5 + .5 * 1/2),
  # then (5 6) (doc 0 only).
  assert w[(4,)] > w[(3, 4)] > w[(5, 6)]
  expected0 = w[(4,)] + w[(3, 4)] * 0.75 + w[(5, 6)]
  expected1 = w[(4,)] + w[(3, 4)] * 0.75
  assert list(docs) == [0, 1]
  np.testing.assert_allclose(scores, [expected0, expected1])


def test_gin_binds_the_core_seal_scorer():
  import gin  # pylint: disable=g-import-not-at-top
  gin.parse_config('from __gin__ import dynamic_registration\n'
                   'from genrec.retrieval import seal_method\n'
                   'seal_method.SealScorer.alpha = 1.5\n')
  try:
    scorer = seal_method.SealScorer()
    assert scorer.alpha == 1.5 and isinstance(scorer, seal.SealScorer)
    assert seal_method.Seal().scorer.alpha == 1.5  # the method's default scorer too
    assert seal.SealScorer(alpha=2.0, beta=0.8).alpha == 2.0  # explicit values win
  finally:
    gin.clear_config()


def test_host_constrained_decoding_generates_corpus_ngrams(tc):
  cfg = dataclasses.replace(tiny_encoder_decoder(), vocab_size=128)
  tx, _ = trainer.make_optimizer(10)
  tr = trainer.Trainer(cfg, tx, partitioning.make_mesh(devices=jax.devices()[:1]))
  state = tr.init_state(0)
  index = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
  x = seq2seq.pad([tc.query_tokens['q0'], tc.query_tokens['q3']], 8)
  beams = tr.predict_host_constrained(state.params, x, beam_size=4, num_steps=5,
                                     allowed_fn=fm_index.NGramConstraint(index, 128))
  seqs, scores = np.asarray(beams.sequences), np.asarray(beams.scores)
  assert np.isfinite(scores).all()
  for s in seqs.reshape(-1, 5):
    assert index.count(s.tolist()) > 0
  # Each token's log-prob is the model's (teacher-forced, whole sequence at
  # once), and they add up to the beam scores.
  model = nnx.merge(tr.graphdef, state.params)
  flat = seqs.reshape(-1, 5)
  logp = jax.nn.log_softmax(model(np.repeat(x, 4, axis=0), np.pad(flat[:, :-1], ((0, 0), (1, 0)))))
  logp = np.take_along_axis(np.asarray(logp), flat[..., None], -1)[..., 0].reshape(2, 4, 5)
  np.testing.assert_allclose(np.asarray(beams.token_log_probs), logp, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logp.sum(-1), scores, rtol=1e-4, atol=1e-4)
