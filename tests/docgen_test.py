import dataclasses
import json

import jax
from flax import nnx
import numpy as np
import pytest
import ranx
import sentencepiece as spm

from genrec import artifact, fm_index, models, partitioning, seal, serve, trainer
from genrec.retrieval import corpus, docgen, pseudo_queries, seq2seq
from genrec.retrieval import export as retrieval_export

TINY = models.TransformerConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


@pytest.fixture(scope='module')
def tc(tmp_path_factory):
  """16 documents with distinctive titles; query i is doc i's title
  (train: even i, test: odd i)."""
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  common = [f'word{j}' for j in range(30)]
  docs, queries, lines = [], [], {'train': '', 'test': ''}
  for i in range(16):
    title = f'topic{i} subject{i} matter{i}'
    text = title + ' ' + ' '.join(rng.choice(common, 20))
    docs.append({'_id': str(i + 1), 'title': title, 'text': text})
    queries.append({'_id': f'q{i}', 'text': title})
    lines['train' if i % 2 == 0 else 'test'] += f'q{i}\t{i + 1}\t1\n'
  folder = root / 'toy'
  (folder / 'qrels').mkdir(parents=True)
  (folder / 'corpus.jsonl').write_text('\n'.join(map(json.dumps, docs)) + '\n')
  (folder / 'queries.jsonl').write_text('\n'.join(map(json.dumps, queries)) + '\n')
  for split, body in lines.items():
    (folder / 'qrels' / f'{split}.tsv').write_text('query-id\tcorpus-id\tscore\n' + body)
  c = corpus.load_beir('toy', str(root))
  path = corpus.train_sentencepiece(
      [corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)],
      str(root / 'spm'), vocab_size=120)
  return corpus.TokenizedCollection.build(c, spm.SentencePieceProcessor(model_file=path))


def test_tokenized_collection_keeps_the_title_once(tc):
  assert corpus.document_text('a b', 'a b c') == 'a b c'
  assert corpus.document_text('t', 'x y') == 't x y'
  assert (tc.title_lengths > 0).all()
  for toks, n in zip(tc.doc_tokens, tc.title_lengths):
    assert tc.sp.decode(toks[:n].tolist()).startswith('topic')
    assert tc.sp.decode(toks.tolist()).count('topic') == 1


def test_seq2seq_arrays_shift_targets_right():
  a = seq2seq.arrays([[5, 6, 7]], [[9, 8]], input_len=4, target_len=3)
  np.testing.assert_array_equal(a['encoder_input_tokens'], [[5, 6, 7, 0]])
  np.testing.assert_array_equal(a['decoder_target_tokens'], [[9, 8, 0]])
  np.testing.assert_array_equal(a['decoder_input_tokens'], [[0, 9, 8]])
  np.testing.assert_array_equal(a['decoder_loss_weights'], [[1, 1, 0]])


def test_atomic_and_naive_docids_are_unique_and_decode_back(tc):
  for method, levels in (('dsi_atomic', 1), ('dsi_naive', 2)):
    ids = docgen.docids(method, tc, docgen.DsiTasks())
    assert ids.num_items == 16 and ids.num_levels == levels and ids.num_collisions == 0
    np.testing.assert_array_equal(ids.tokens_to_items(ids.token_table()[1:]), np.arange(1, 17))
  naive = docgen.docids('dsi_naive', tc, docgen.DsiTasks())
  np.testing.assert_array_equal(naive.codes[12], [1, 2])  # document "12"


def test_semantic_docids_cluster_the_text_embeddings(tc, monkeypatch):
  # Two well-separated groups of documents: the first level must split them.
  emb = np.zeros((16, 4), np.float32)
  emb[:8, 0], emb[8:, 1] = 1, 1
  emb += np.random.default_rng(0).normal(0, 0.01, emb.shape)
  monkeypatch.setattr(docgen.text_encoder, 'encode', lambda texts, *args, **kw: emb[:len(texts)])
  ids = docgen.docids('dsi_semantic', tc, docgen.DsiTasks(semantic_branching=2,
                                                           semantic_levels=2))
  assert ids.num_collisions == 0
  first = ids.codes[1:, 0]
  assert len(set(first[:8])) == 1 and len(set(first[8:])) == 1 and first[0] != first[8]


def test_dsi_examples_mix_indexing_and_train_queries_only(tc):
  ids = docgen.docids('dsi_atomic', tc, docgen.DsiTasks())
  tasks = docgen.DsiTasks(num_spans=2, retrieval_repeats=3)
  a = docgen.dsi_examples(tc, ids, 100, tasks, 'train', 16, seed=0)
  # per doc: prefix + 2 spans + title; 8 train pairs x 3 repeats.
  assert len(a['encoder_input_tokens']) == 16 * 4 + 8 * 3
  assert set(a['decoder_target_tokens'][:, 0]) == set(ids.token_table()[1:, 0] + 100)
  test_queries = {tuple(tc.query_tokens[f'q{i}']) for i in range(1, 16, 2)}
  inputs = {tuple(r[r > 0]) for r in a['encoder_input_tokens'][16 * 4:]}
  assert not inputs & test_queries


def test_seal_targets_are_corpus_ngrams(tc):
  a = docgen.seal_examples(tc, docgen.SealTasks(ngram_len=4), 'train', 16, seed=0)
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
  scorer = docgen.SealScorer(alpha=1.0, beta=0.5)
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
                   'from genrec.retrieval import docgen\n'
                   'docgen.SealScorer.alpha = 1.5\n')
  try:
    assert docgen.SealScorer().alpha == 1.5 and isinstance(docgen.SealScorer(), seal.SealScorer)
    assert seal.SealScorer(alpha=2.0, beta=0.8).alpha == 2.0  # explicit values win
  finally:
    gin.clear_config()


def test_host_constrained_decoding_generates_corpus_ngrams(tc):
  cfg = dataclasses.replace(TINY, vocab_size=128)
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


@pytest.mark.parametrize('method', ['dsi_atomic', 'seal'])
def test_train_and_evaluate_learns_the_toy_collection(tc, tmp_path, method):
  kw = dict(model_config=TINY, num_train_steps=300, batch_size=32, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                          warmup_steps=20),
            dsi_beam_size=16, seal_beam_size=4, log_every_steps=100,
            seal_tasks=docgen.SealTasks(ngram_len=4, span_input_len=8),
            dsi_tasks=docgen.DsiTasks(num_spans=2),
            mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  row = docgen.train_and_evaluate(method, tc, str(tmp_path), **kw)
  # Test queries are titles of documents seen only by the indexing task.
  assert row['recall@10'] >= 0.75, row
  assert row['queries'] == 8 and row['training'].startswith('300 x 32')
  again = docgen.train_and_evaluate(method, tc, str(tmp_path), **kw)  # from the checkpoint
  assert again['train_s'] == row['train_s'] and again['ndcg@10'] == row['ndcg@10']
  run = ranx.Run.from_file(str(tmp_path / 'test.trec'), kind='trec')
  qrels = ranx.Qrels({q: {d: 1 for d in ds} for q, ds in tc.collection.qrels['test'].items()})
  assert ranx.evaluate(qrels, run, 'ndcg@10') == pytest.approx(row['ndcg@10'], abs=1e-4)
  if method == 'seal':  # the saved n-grams rank the same documents again
    saved = np.load(tmp_path / 'test_ngrams.npz')
    fm = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
    ranked, _, _ = docgen.rescore_seal(list(saved['qids']), saved['seqs'], saved['logp'],
                                       docgen.SealScorer(), tc, fm)
    m = corpus.retrieval_metrics(ranked, tc.collection.qrels['test'])
    assert m['ndcg@10'] == pytest.approx(row['ndcg@10'], abs=1e-4)
  _exported_retriever_answers_like_the_run(tc, tmp_path, method)


def _exported_retriever_answers_like_the_run(tc, run_dir, method, vocabulary=None,
                                            saved_model=True):
  """The run exported (DSI: StableHLO and SavedModel; SEAL: StableHLO start and
  step functions, the FM-index on the host) and served: the same documents
  and scores as the run's own TREC file, for the test queries (tokenized by
  `vocabulary`, default the collection's SentencePiece model)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from starlette.testclient import TestClient  # pylint: disable=g-import-not-at-top
  out = retrieval_export.export(str(run_dir), k=10, platforms=('cpu',), saved_model=saved_model)
  manifest = json.loads((run_dir / 'serving' / 'manifest.json').read_text())
  assert manifest['kind'] == 'retriever' and manifest['num_items'] == 16
  assert manifest['method'] == method
  want = {}
  for line in (run_dir / 'test.trec').read_text().splitlines():
    q, _, d, rank, score, _ = line.split()
    if int(rank) <= 10:
      want.setdefault(q, []).append((d, float(score)))
  qids = sorted(want)
  query = np.zeros((len(qids), 16), np.int32)
  for i, q in enumerate(qids):
    tokens = (vocabulary or tc.sp).encode(tc.collection.queries[q])[:16]
    query[i, :len(tokens)] = tokens
  served = artifact.Artifact(out).expect('retriever')
  if method == 'seal':
    documents, scores = seal.SealRetriever(served)(query)
    assert manifest['saved_model'] is None and sorted(manifest['functions']) == ['step']
  else:
    with pytest.raises(ValueError, match='not a SEAL retriever'):
      seal.SealRetriever(served)
    documents, scores = served(query)
  if method != 'seal' and saved_model:
    saved = tf.saved_model.load(str(run_dir / 'serving' / 'saved_model' /
                                    str(manifest['checkpoint_step'])))
    tf_out = saved.signatures['retrieve'](query=tf.constant(query))
    np.testing.assert_array_equal(tf_out['documents'].numpy(), documents)
    np.testing.assert_allclose(tf_out['scores'].numpy(), scores, rtol=1e-4, atol=1e-4)
  names = served.external_ids()
  app = serve.make_app(retriever=out, warm_up=False)
  with TestClient(app) as client:
    for i, q in enumerate(qids):
      found = documents[i] > 0
      assert [names[d] for d in documents[i][found]] == [d for d, _ in want[q]]
      # TREC scores are nudged below ties to keep the order: compare loosely.
      np.testing.assert_allclose(scores[i][found], [s for _, s in want[q]], rtol=1e-4,
                                 atol=1e-4)
      r = client.post('/v1/retrieve', json={'query': tc.collection.queries[q], 'k': 3})
      assert r.status_code == 200 and r.json()['documents'] == [d for d, _ in want[q][:3]]
    for body in ({'query': ''}, {'query': 3}, {'query': 'topic1', 'k': 11}, {'k': 3},
                 {'query': 'topic1', 'history': []}):
      r = client.post('/v1/retrieve', json=body)
      assert r.status_code == 422 and r.json()['error'], body
    assert client.post('/v1/recommend', json={'history': [1]}).status_code == 404


def test_pseudo_queries_are_generated_once_and_index_every_document(tc, tmp_path):
  arrays = pseudo_queries.generator_examples(tc, 'train', 16, 8)
  # 8 train (doc -> query) pairs and 16 (text after the title -> title); every
  # target ends with EOS, and the padding after it counts in the loss.
  assert len(arrays['decoder_target_tokens']) == 8 + 16
  assert all(pseudo_queries.EOS in t for t in arrays['decoder_target_tokens'])
  assert arrays['decoder_loss_weights'].all()
  qg = pseudo_queries.QueryGeneration(num_queries=2, query_len=8, num_train_steps=30,
                                      batch_size=16)
  args = (tc, qg, str(tmp_path), TINY,
          lambda n: trainer.make_optimizer(n, learning_rate=3e-3, warmup_steps=5),
          lambda: partitioning.make_mesh(devices=jax.devices()[:1]), 16)
  pq = pseudo_queries.generate(*args, log_every_steps=30)
  assert len(pq) == 16 and all(1 <= len(queries) <= 2 for queries in pq)
  assert all(((q > pseudo_queries.EOS) & (q < tc.text_vocab_size)).all()
             for queries in pq for q in queries)
  assert all(isinstance(t, str) for t in pseudo_queries.decode(tc, pq[0]))
  # Generated once: a second call reads them back (its generator folder has
  # the one checkpoint and the queries).
  again = pseudo_queries.generate(*args, log_every_steps=30)
  assert all(np.array_equal(a, b) for x, y in zip(pq, again) for a, b in zip(x, y))
  assert len(list(tmp_path.glob('query_generator-*/queries.npz'))) == 1
  # Their text (queries_file format), read back as another run's pseudo-queries.
  path, = tmp_path.glob('query_generator-*/queries.jsonl')
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert len(lines) == sum(map(len, pq)) and lines[0]['doc_id'] == tc.collection.doc_ids[0]
  read = pseudo_queries.read(tc, dataclasses.replace(qg, queries_file=str(path)))
  assert [pseudo_queries.decode(tc, q) for q in read] == [pseudo_queries.decode(tc, q)
                                                          for q in pq]
  # Sampled queries come from the same generator (no second training), in files
  # of their own, distinct within a document.
  sampled = dataclasses.replace(qg, decoding='sample', top_k=5)
  pq_sampled = pseudo_queries.generate(tc, sampled, *args[2:], log_every_steps=30)
  assert len(list(tmp_path.glob('query_generator-*'))) == 1  # one generator folder
  assert len(list(tmp_path.glob('query_generator-*/queries-sample-k5-t1.npz'))) == 1
  assert len(list(tmp_path.glob('query_generator-*/queries-sample-k5-t1.jsonl'))) == 1
  assert all(len({q.tobytes() for q in queries}) == len(queries) <= 2 for queries in pq_sampled)
  assert any(pq_sampled) and all(((q > pseudo_queries.EOS) & (q < tc.text_vocab_size)).all()
                                 for queries in pq_sampled for q in queries)
  share = pseudo_queries.diversity(tc, pq_sampled)
  assert 0 < share['pseudo_distinct'] <= 1 and 0 <= share['pseudo_train_copies'] <= 1
  copies = [[tc.query_tokens[q] for q in sorted(tc.collection.qrels['train'])[:1]] * 2]
  assert pseudo_queries.diversity(tc, copies) == {'pseudo_distinct': 0.5,
                                                   'pseudo_train_copies': 1.0}
  with pytest.raises(ValueError, match="decoding must be one of"):
    pseudo_queries.QueryGeneration(decoding='greedy')
  # Every document's queries are indexing inputs of DSI (-> its docid) and SEAL.
  ids = docgen.docids('dsi_atomic', tc, docgen.DsiTasks(), None)
  tasks = docgen.DsiTasks(num_spans=2)
  plain = docgen.dsi_examples(tc, ids, 0, tasks, 'train', 16, 0)
  more = docgen.dsi_examples(tc, ids, 0, tasks, 'train', 16, 0, pq)
  added = sum(map(len, pq))
  assert len(more['encoder_input_tokens']) == len(plain['encoder_input_tokens']) + added
  seal_tasks = docgen.SealTasks(ngram_len=4, span_input_len=8)
  assert (len(docgen.seal_examples(tc, seal_tasks, 'train', 16, 0, pq)['encoder_input_tokens'])
          > len(docgen.seal_examples(tc, seal_tasks, 'train', 16, 0)['encoder_input_tokens']))


def test_queries_file_is_tokenized_by_the_retriever_and_checked(tc, tmp_path):
  path = tmp_path / 'queries.jsonl'
  path.write_text(''.join(json.dumps({'doc_id': d, 'text': t}) + '\n' for d, t in [
      ('1', 'what is topic0'), ('1', 'subject0 matter'), ('1', 'a third one'), ('3', 'topic2')]))
  qg = pseudo_queries.QueryGeneration(num_queries=2, queries_file=str(path))
  pq = pseudo_queries.read(tc, qg)
  assert [len(q) for q in pq] == [2, 0, 1] + [0] * 13  # capped at num_queries
  np.testing.assert_array_equal(pq[2][0], tc.sp.encode('topic2'))
  for body, match in [('{"doc_id": "99", "text": "x"}\n', "line 1: doc_id '99' is not a "
                       'document of toy'),
                      ('\n{"text": "x"}\n', 'line 2: expected a JSON object with "doc_id"'),
                      ('not json\n', 'line 1: expected a JSON object')]:
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
      pseudo_queries.read(tc, qg)
  with pytest.raises(FileNotFoundError, match='queries_file .* does not exist'):
    pseudo_queries.read(tc, dataclasses.replace(qg, queries_file=str(tmp_path / 'none')))


def test_round_trip_filter_keeps_the_queries_that_find_their_document(tc, tmp_path):
  """filter_top_k: a pseudo-query stays if BM25 ranks its document within the
  top k for it (another document's text, as a memorizing generator writes
  it, does not); the setting is part of a retriever's settings, not of the
  generator's, and a filter that keeps nothing is refused by name."""
  words = [t.split() for t in tc.collection.texts]  # each document's own words
  path = tmp_path / 'queries.jsonl'
  path.write_text(''.join(json.dumps({'doc_id': d, 'text': ' '.join(w)}) + '\n' for d, w in [
      ('1', words[0]), ('1', words[5]), ('2', words[1]), ('3', words[7])]))
  qg = pseudo_queries.QueryGeneration(queries_file=str(path), filter_top_k=1)
  kept = pseudo_queries.round_trip_filter(tc, pseudo_queries.read(tc, qg), 1)
  assert [[tc.sp.decode(q.tolist()) for q in queries] for queries in kept[:3]] == [
      [' '.join(words[0])], [' '.join(words[1])], []]
  assert not any(kept[3:])
  plain = dataclasses.replace(qg, filter_top_k=0)
  assert qg.generator_repr() == plain.generator_repr()
  assert qg.settings_repr() == plain.settings_repr() + ' + filter_top_k=1'
  with pytest.raises(ValueError, match='filter_top_k must be >= 0'):
    pseudo_queries.QueryGeneration(filter_top_k=-1)
  path.write_text(json.dumps({'doc_id': '1', 'text': ' '.join(words[5])}) + '\n')
  with pytest.raises(ValueError, match='filter_top_k = 1 keeps none of the 1 pseudo-queries'):
    docgen.train_and_evaluate('dsi_atomic', tc, str(tmp_path / 'run'), query_generation=qg)


def test_bad_method_or_split_is_named(tc, tmp_path):
  with pytest.raises(ValueError, match='Unknown method'):
    docgen.train_and_evaluate('dsi_bogus', tc, str(tmp_path))
  with pytest.raises(ValueError, match="no qrels split 'dev'"):
    docgen.train_and_evaluate('seal', tc, str(tmp_path), eval_split='dev')


def test_pretrained_encoder_dsi_starts_from_dense_retrieval(tc, tmp_path, tiny_bert_dir):
  """DSI atomic on a pretrained encoder (architecture bert_encoder_decoder):
  WordPiece inputs, docid tokens after the reserved ones, and untrained
  (learning rate 0) its constrained beam search scores the documents as the
  encoder's dense retrieval does."""
  from genrec import text_encoder
  cfg = dataclasses.replace(TINY, architecture='bert_encoder_decoder',
                            encoder_checkpoint=tiny_bert_dir, num_encoder_layers=0)
  kw = dict(model_config=cfg, num_train_steps=1, batch_size=8, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=0.0),
            dsi_beam_size=16, dsi_tasks=docgen.DsiTasks(num_spans=1),
            mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  # Pseudo-queries from a file (a SentencePiece generator's text), tokenized by
  # WordPiece; at learning rate 0 they change the examples, not the model.
  queries = tmp_path / 'queries.jsonl'
  queries.write_text(''.join(json.dumps({'doc_id': d, 'text': f'about topic{i}'}) + '\n'
                             for i, d in enumerate(tc.collection.doc_ids)))
  with pytest.raises(ValueError, match='queries_file'):  # no generator on this encoder
    docgen.train_and_evaluate('dsi_atomic', tc, str(tmp_path / 'gen'), **kw,
                              query_generation=pseudo_queries.QueryGeneration(num_queries=2))
  row = docgen.train_and_evaluate(
      'dsi_atomic', tc, str(tmp_path / 'pre'), **kw,
      query_generation=pseudo_queries.QueryGeneration(queries_file=str(queries)))
  assert row['tokens'] == 'WordPiece 30522' and row['init'].endswith('(+ docid embeddings)')
  assert row['pseudo_queries'] == 1 and row['training'].startswith('1 x 8 (')
  c = tc.collection
  qids = sorted(c.qrels['test'])
  dense = text_encoder.encode([c.queries[q] for q in qids], tiny_bert_dir) @ (
      docgen.document_embeddings(c, None, tiny_bert_dir).T)
  run = ranx.Run.from_file(str(tmp_path / 'pre' / 'test.trec'), kind='trec')
  for q, cos in zip(qids, dense):  # beam scores: log-softmax of 20 x cosine, every doc
    got = np.array([run.run[q][d] for d in c.doc_ids])
    np.testing.assert_allclose(got - got.max(), 20 * (cos - cos.max()), atol=1e-3)
  with open(tmp_path / 'pre' / 'retrieval_run.json') as f:
    assert json.load(f)['docid_token_shift'] == 0
  assert (tmp_path / 'pre' / docgen.WORDPIECE).exists()
  # Residual semantic docids start from their codebooks (their sum over the
  # levels approximates each document's embedding; a training run of them costs
  # the suite ~15 s, the cranfield runs use them).
  tasks = docgen.DsiTasks(num_spans=1, semantic_scheme='residual', semantic_branching=4,
                          semantic_levels=2)
  emb = docgen.document_embeddings(c, None, tiny_bert_dir)
  ids = docgen.docids('dsi_semantic', tc, tasks, model_dir=tiny_bert_dir)
  books = docgen.residual_codebooks(ids, emb, 2)
  approx = sum(b[ids.codes[1:, level]] for level, b in enumerate(books))
  assert np.linalg.norm(emb - approx) < np.linalg.norm(emb - books[0][ids.codes[1:, 0]])
  # Exported (WordPiece tokenizer.json beside the model) and served like the run.
  # (The SavedModel path is the default architecture's, tested above.)
  _exported_retriever_answers_like_the_run(tc, tmp_path / 'pre', 'dsi_atomic',
                                           text_encoder.WordPieceVocabulary(tiny_bert_dir),
                                           saved_model=False)
  # SEAL on the pretrained encoder: WordPiece n-grams under a WordPiece
  # FM-index, its output table the checkpoint's word embeddings; every result
  # a document, served like the run.
  # (Untrained, no n-gram is likelier under the model than in the corpus, so
  # SEAL's scorer returns nothing: it trains a little.)
  seal_kw = {**kw, 'seal_beam_size': 4, 'num_train_steps': 100, 'log_every_steps': 100,
             'optimizer_fn': lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                              warmup_steps=10),
             'seal_tasks': docgen.SealTasks(ngram_len=4, span_input_len=8)}
  # (Given the collection's SentencePiece FM-index, as the run mode passes it:
  # the WordPiece run builds its own.)
  sp_index = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
  row = docgen.train_and_evaluate('seal', tc, str(tmp_path / 'seal'), fm=sp_index, **seal_kw)
  assert row['tokens'] == 'WordPiece 30522' and row['init'].endswith('(+ word embeddings)')
  words = text_encoder.WordPieceVocabulary(tiny_bert_dir)
  wp_index = fm_index.FMIndex.build(
      [words.encode(corpus.document_text(t, x)) for t, x in zip(c.titles, c.texts)], 30522)
  decoded = np.load(tmp_path / 'seal' / 'test_ngrams.npz')['seqs']
  assert all(wp_index.count(tuple(int(t) for t in g[g > 0])) > 0
             for g in decoded.reshape(-1, decoded.shape[-1]))  # n-grams of the documents
  with pytest.raises(ValueError, match='FM-index given .* is not over toy'):
    docgen.train_and_evaluate('seal', tc, str(tmp_path / 'seal_sp'), fm=wp_index,
                              **{**seal_kw, 'model_config': TINY})
  run = ranx.Run.from_file(str(tmp_path / 'seal' / 'test.trec'), kind='trec')
  assert run.run and all(set(docs) <= set(c.doc_ids) for docs in run.run.values())
  _exported_retriever_answers_like_the_run(tc, tmp_path / 'seal', 'seal',
                                           text_encoder.WordPieceVocabulary(tiny_bert_dir),
                                           saved_model=False)


def test_identifier_views_sum_each_documents_probability():
  """A document's score is the log of its probability summed over views; a
  beam that several documents share gives each an equal part."""
  docid_view = ([[[0], [1], []]], np.log([[0.5, 0.2, 0.1]]))
  title_view = ([[[1, 2], [3]]], np.log([[0.4, 0.05]]))
  ranked, scores = docgen.fuse_identifier_views([docid_view, title_view])
  assert ranked == [[0, 1, 2, 3]]
  np.testing.assert_allclose(np.exp(scores[0]), [0.5, 0.4, 0.2, 0.05])
  ranked, _ = docgen.fuse_identifier_views([docid_view, title_view], k=2)
  assert ranked == [[0, 1]]
  # Far-down beams (log-probs of -1000) still order, without underflow.
  deep = ([[[0], [1], [2]]], np.array([[-1000.0, -1001.0, -np.inf]]))
  ranked, scores = docgen.fuse_identifier_views([deep])
  assert ranked == [[0, 1]] and np.isfinite(scores[0]).all()


def test_dsi_with_title_identifiers(tc, tmp_path):
  """DsiTasks.title_len: every docid example has a twin that targets the
  document's title prefix (EOS-padded); retrieval decodes both identifiers
  under their tries and fuses them; the export says it does not serve it."""
  tasks = docgen.DsiTasks(num_spans=2, title_len=4)
  ids = docgen.docids('dsi_atomic', tc, tasks)
  shift = tc.text_vocab_size - docgen.NUM_RESERVED_TOKENS
  plain = docgen.dsi_examples(tc, ids, shift, dataclasses.replace(tasks, title_len=0),
                              'train', 16, seed=0)
  both = docgen.dsi_examples(tc, ids, shift, tasks, 'train', 16, seed=0)
  n = len(plain['encoder_input_tokens'])
  assert len(both['encoder_input_tokens']) == 2 * n
  np.testing.assert_array_equal(both['encoder_input_tokens'][n:], plain['encoder_input_tokens'])
  titles, has_title = docgen.title_codes(tc, 4)
  assert has_title.all()
  first = int(plain['decoder_target_tokens'][0, 0]) - shift - ids.level_offsets[0]
  np.testing.assert_array_equal(both['decoder_target_tokens'][n], titles[first])
  short = docgen.title_codes(tc, 12)[0]  # titles of fewer tokens end in EOS
  assert (short[:, -1] == docgen.EOS_ID).all()
  kw = dict(model_config=TINY, num_train_steps=300, batch_size=32, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                          warmup_steps=20),
            dsi_beam_size=16, log_every_steps=100, dsi_tasks=tasks,
            mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  row = docgen.train_and_evaluate('dsi_atomic', tc, str(tmp_path), **kw)
  assert row['identifiers'] == 'atomic docid + title prefix (4 tokens)'
  assert row['recall@10'] >= 0.75, row
  run = ranx.Run.from_file(str(tmp_path / 'test.trec'), kind='trec')
  assert all(set(docs) <= set(tc.collection.doc_ids) and len(docs) <= 16
             for docs in run.run.values())
  with pytest.raises(ValueError, match='title identifiers.*not exported'):
    retrieval_export.export(str(tmp_path), k=10, platforms=('cpu',))
