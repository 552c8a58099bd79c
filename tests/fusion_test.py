"""Hybrid retrieval (`genrec.retrieval.fusion`): fusions checked against ranx,
alpha tuned on held-out queries, TREC run files read back."""

import numpy as np
import pytest

from genrec.retrieval import corpus, fusion


def _random_run(rng, queries, docs, n):
  ranked, scores = {}, {}
  for q in queries:
    picked = rng.choice(docs, n, replace=False).tolist()
    s = np.sort(rng.normal(size=n))[::-1]
    ranked[q], scores[q] = picked, s.tolist()
  return ranked, scores


def _ranx_run(run):
  ranx = pytest.importorskip('ranx')
  ranked, scores = run
  return ranx.Run({q: dict(zip(ranked[q], map(float, scores[q]))) for q in ranked})


def test_fusions_match_ranx():
  ranx = pytest.importorskip('ranx')
  rng = np.random.default_rng(0)
  queries, docs = [f'q{i}' for i in range(6)], [f'd{i}' for i in range(40)]
  a, b = _random_run(rng, queries, docs, 15), _random_run(rng, queries, docs, 12)
  ours_rrf = fusion.reciprocal_rank_fusion([a, b])
  theirs_rrf = ranx.fuse([_ranx_run(a), _ranx_run(b)], norm=None, method='rrf',
                         params={'k': 60}).to_dict()
  ours_int = fusion.interpolate(a, b, 0.3)
  theirs_int = ranx.fuse([_ranx_run(a), _ranx_run(b)], norm='min-max', method='wsum',
                         params={'weights': [0.3, 0.7]}).to_dict()
  for ours, theirs in ((ours_rrf, theirs_rrf), (ours_int, theirs_int)):
    for q in queries:
      got = dict(zip(ours[0][q], ours[1][q]))
      assert set(got) == set(theirs[q])  # every document of either run, once
      for d, s in theirs[q].items():
        assert got[d] == pytest.approx(s, abs=1e-9)
      assert ours[1][q] == sorted(ours[1][q], reverse=True)


def test_rrf_by_hand_and_ties_keep_the_first_runs_order():
  a = ({'q': ['x', 'y', 'z']}, {'q': [3.0, 2.0, 1.0]})
  b = ({'q': ['z', 'w']}, {'q': [9.0, 8.0]})
  ranked, scores = fusion.reciprocal_rank_fusion([a, b])
  assert ranked['q'] == ['z', 'x', 'y', 'w']  # z: 1/63 + 1/61; x: 1/61; y and w: 1/62
  assert scores['q'][0] == pytest.approx(1 / 63 + 1 / 61)
  # alpha 1 is the first run's order; absent docs get 0.
  assert fusion.interpolate(a, b, 1.0)[0]['q'][:3] == ['x', 'y', 'z']
  # alpha 0: z (1), then x, y and w, all 0 (w is last in b, x and y are not
  # in b): ties keep the first run's order.
  assert fusion.interpolate(a, b, 0.0)[0]['q'] == ['z', 'x', 'y', 'w']
  with pytest.raises(ValueError, match='alpha must be in'):
    fusion.interpolate(a, b, 1.5)


def test_alpha_is_tuned_on_the_held_out_queries_only():
  # BM25 finds the relevant doc at rank 3; the generative run at rank 1 for
  # the dev queries only (and at rank 10 for the others).
  docs = [f'd{i}' for i in range(10)]
  bm25 = ({q: docs for q in 'abcd'}, {q: list(range(10, 0, -1)) for q in 'abcd'})
  gen_order = {q: ['d2'] + [d for d in docs if d != 'd2'] for q in 'ab'}
  gen_order |= {q: [d for d in docs if d != 'd2'] + ['d2'] for q in 'cd'}
  gen = (gen_order, {q: list(range(10, 0, -1)) for q in 'abcd'})
  qrels = {q: {'d2'} for q in 'abcd'}
  alpha, curve = fusion.tune_alpha(bm25, gen, {q: qrels[q] for q in 'ab'})
  assert alpha < 0.5 and len(curve) == len(fusion.ALPHA_GRID)
  alpha_other, _ = fusion.tune_alpha(bm25, gen, {q: qrels[q] for q in 'cd'})
  assert alpha_other > 0.5  # where the generative run is wrong, BM25 wins
  with pytest.raises(ValueError, match='held-out queries'):
    fusion.tune_alpha(bm25, gen, {})


def test_trec_run_files_round_trip_and_bad_lines_are_named(tmp_path):
  run = ({'q1': ['d3', 'd1'], 'q2': ['d2']}, {'q1': [2.5, 1.0], 'q2': [-0.5]})
  path = tmp_path / 'run.trec'
  corpus.write_trec_run(str(path), *run, 'test')
  assert fusion.read_trec_run(str(path)) == run
  path.write_text('q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 two 0.4 tag\n')
  with pytest.raises(ValueError, match=r'line 2: rank must be an integer'):
    fusion.read_trec_run(str(path))
  path.write_text('q1 d1 1 0.5\n')
  with pytest.raises(ValueError, match=r'line 1: a TREC run line has 6 fields'):
    fusion.read_trec_run(str(path))


def test_hold_out_splits_training_queries_deterministically():
  qrels = {f'q{i}': {f'd{i}'} for i in range(20)}
  grades = {q: {d: 1 for d in r} for q, r in qrels.items()}
  c = corpus.Collection('toy', [f'd{i}' for i in range(20)], [''] * 20, [''] * 20,
                        {q: q for q in qrels}, {'train': qrels, 'test': {'q0': {'d0'}}},
                        {'train': grades})
  h = c.hold_out(0.25)
  assert len(h.qrels['dev']) == 5 and len(h.qrels['train']) == 15
  assert set(h.qrels['dev']) | set(h.qrels['train']) == set(qrels)
  assert set(h.grades['dev']) == set(h.qrels['dev'])
  assert h.qrels['test'] == c.qrels['test'] and c.qrels['train'] == qrels  # c untouched
  assert c.hold_out(0.25).qrels['dev'] == h.qrels['dev']
  assert c.hold_out(0.25, seed=1).qrels['dev'] != h.qrels['dev']
  with pytest.raises(ValueError, match='already has a qrels split'):
    h.hold_out(0.25)
  with pytest.raises(ValueError, match='0 < fraction < 1'):
    c.hold_out(1.0)
