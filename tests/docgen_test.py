import dataclasses
import json

import jax
import numpy as np
import pytest
import ranx

from conftest import tiny_encoder_decoder
from genrec import artifact, fm_index, models, partitioning, seal, serve, trainer
from genrec import ids as ids_lib
from genrec.ids import extend
from genrec.retrieval import corpus, docgen, dsi, pseudo_queries, run_folder, seal_method
from genrec.retrieval import export as retrieval_export

TINY = tiny_encoder_decoder()


@pytest.mark.parametrize('method', ['dsi_atomic', 'seal'])
def test_train_and_evaluate_learns_the_toy_collection(tc, tmp_path, method):
  kw = dict(model=models.EncoderDecoderModel(TINY), num_train_steps=300, batch_size=32, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                          warmup_steps=20),
            log_every_steps=100, mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  m = dataclasses.replace(docgen.make_method(method), **{
      'dsi_atomic': dict(beam_size=16, tasks=dsi.DsiTasks(num_spans=2)),
      'seal': dict(beam_size=4, tasks=seal_method.SealTasks(ngram_len=4, span_input_len=8))
  }[method])
  row = docgen.train_and_evaluate(m, tc, str(tmp_path), **kw)
  # Test queries are titles of documents seen only by the indexing task.
  assert row['recall@10'] >= 0.75, row
  assert row['queries'] == 8 and row['training'].startswith('300 x 32')
  again = docgen.train_and_evaluate(m, tc, str(tmp_path), **kw)  # from the checkpoint
  assert again['train_s'] == row['train_s'] and again['ndcg@10'] == row['ndcg@10']
  run = ranx.Run.from_file(str(tmp_path / 'test.trec'), kind='trec')
  qrels = ranx.Qrels({q: {d: 1 for d in ds} for q, ds in tc.collection.qrels['test'].items()})
  assert ranx.evaluate(qrels, run, 'ndcg@10') == pytest.approx(row['ndcg@10'], abs=1e-4)
  if method == 'seal':  # the saved n-grams rank the same documents again
    saved = np.load(tmp_path / 'test_ngrams.npz')
    fm = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
    ranked, _, _ = seal_method.rescore(list(saved['qids']), saved['seqs'], saved['logp'],
                                       seal_method.SealScorer(), tc, fm)
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


def test_each_name_is_one_method_object(tc):
  methods = {name: docgen.make_method(name) for name in docgen.METHODS}
  assert {name: m.name for name, m in methods.items()} == {n: n for n in docgen.METHODS}
  assert [type(m.docids) for m in (methods['dsi_atomic'], methods['dsi_naive'],
                                    methods['dsi_semantic'])] == [
      ids_lib.AtomicIds, ids_lib.NaiveDigitIds, ids_lib.HierarchicalKMeansIds]
  assert isinstance(methods['seal'], seal_method.Seal)
  residual = ids_lib.ResidualKMeansIds(num_levels=2, codebook_size=8)
  assert docgen.make_method('dsi_semantic', dsi_semantic_docids=residual).docids == residual
  # gin binds the method classes and the semantic docids, as the gin files do.
  import gin  # pylint: disable=g-import-not-at-top
  gin.parse_config('from __gin__ import dynamic_registration\n'
                   'from genrec import ids\n'
                   'from genrec.retrieval import docgen\n'
                   'from genrec.retrieval import dsi\n'
                   'docgen.make_method.dsi_semantic_docids = @ids.ResidualKMeansIds()\n'
                   'ids.ResidualKMeansIds.codebook_size = 128\n'
                   'dsi.Dsi.beam_size = 7\n'
                   'dsi.DsiTasks.num_spans = 1\n')
  try:
    m = docgen.make_method('dsi_semantic')
    assert m.identifiers == 'semantic docid, residual k-means 3 x 128'
    assert m.beam_size == 7 and m.tasks.num_spans == 1
  finally:
    gin.clear_config()


def test_unknown_method_or_split_is_named(tc, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown method 'dsi_bogus'; use one of \('dsi_atomic', "
                     r"'dsi_naive', 'dsi_semantic', 'seal'\)"):
    docgen.make_method('dsi_bogus')
  with pytest.raises(ValueError, match="no qrels split 'dev'"):
    docgen.train_and_evaluate(docgen.make_method('seal'), tc, str(tmp_path), eval_split='dev')


def test_pretrained_encoder_dsi_starts_from_dense_retrieval(tc, tmp_path, tiny_bert_dir):
  """DSI atomic on a pretrained encoder (models.BertEncoderDecoderModel):
  WordPiece inputs, docid tokens after the reserved ones, and untrained
  (learning rate 0) its constrained beam search scores the documents as the
  encoder's dense retrieval does."""
  from genrec import text_encoder
  cfg = models.BertEncoderDecoderConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                        num_decoder_layers=1, dropout_rate=0.0,
                                        encoder_checkpoint=tiny_bert_dir)
  kw = dict(model=models.BertEncoderDecoderModel(cfg), num_train_steps=1, batch_size=8, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=0.0),
            mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  atomic = dataclasses.replace(docgen.make_method('dsi_atomic'), beam_size=16,
                               tasks=dsi.DsiTasks(num_spans=1))
  # Pseudo-queries from a file (a SentencePiece generator's text), tokenized by
  # WordPiece; at learning rate 0 they change the examples, not the model.
  queries = tmp_path / 'queries.jsonl'
  queries.write_text(''.join(json.dumps({'doc_id': d, 'text': f'about topic{i}'}) + '\n'
                             for i, d in enumerate(tc.collection.doc_ids)))
  with pytest.raises(ValueError, match='queries_file'):  # no generator on this encoder
    docgen.train_and_evaluate(atomic, tc, str(tmp_path / 'gen'), **kw,
                              query_generation=pseudo_queries.QueryGeneration(num_queries=2))
  row = docgen.train_and_evaluate(
      atomic, tc, str(tmp_path / 'pre'), **kw,
      query_generation=pseudo_queries.QueryGeneration(queries_file=str(queries)))
  assert row['tokens'] == 'WordPiece 30522' and row['init'].endswith('(+ docid embeddings)')
  assert row['pseudo_queries'] == 1 and row['training'].startswith('1 x 8 (')
  c = tc.collection
  qids = sorted(c.qrels['test'])
  dense = text_encoder.encode([c.queries[q] for q in qids], tiny_bert_dir) @ (
      dsi.document_embeddings(c, None, tiny_bert_dir).T)
  run = ranx.Run.from_file(str(tmp_path / 'pre' / 'test.trec'), kind='trec')
  for q, cos in zip(qids, dense):  # beam scores: log-softmax of 20 x cosine, every doc
    got = np.array([run.run[q][d] for d in c.doc_ids])
    np.testing.assert_allclose(got - got.max(), 20 * (cos - cos.max()), atol=1e-3)
  with open(tmp_path / 'pre' / 'retrieval_run.json') as f:
    assert json.load(f)['docid_token_shift'] == 0
  assert (tmp_path / 'pre' / run_folder.WORDPIECE).exists()
  # Residual semantic docids start from their codebooks (their sum over the
  # levels approximates each document's embedding; a training run of them costs
  # the suite ~15 s, the cranfield runs use them).
  emb = dsi.document_embeddings(c, None, tiny_bert_dir)
  ids = dsi.fit_docids(ids_lib.ResidualKMeansIds(num_levels=2, codebook_size=4), c,
                       model_dir=tiny_bert_dir)
  books = extend.residual_codebooks(ids, emb, 2)
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
  seal = dataclasses.replace(docgen.make_method('seal'), beam_size=4,
                             tasks=seal_method.SealTasks(ngram_len=4, span_input_len=8))
  seal_kw = {**kw, 'num_train_steps': 100, 'log_every_steps': 100,
             'optimizer_fn': lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                              warmup_steps=10)}
  # (Given the collection's SentencePiece FM-index, as the run mode passes it:
  # the WordPiece run builds its own.)
  sp_index = fm_index.FMIndex.build(tc.doc_tokens, tc.text_vocab_size)
  row = docgen.train_and_evaluate(seal, tc, str(tmp_path / 'seal'), fm=sp_index, **seal_kw)
  assert row['tokens'] == 'WordPiece 30522' and row['init'].endswith('(+ word embeddings)')
  words = text_encoder.WordPieceVocabulary(tiny_bert_dir)
  wp_index = fm_index.FMIndex.build(
      [words.encode(corpus.document_text(t, x)) for t, x in zip(c.titles, c.texts)], 30522)
  decoded = np.load(tmp_path / 'seal' / 'test_ngrams.npz')['seqs']
  assert all(wp_index.count(tuple(int(t) for t in g[g > 0])) > 0
             for g in decoded.reshape(-1, decoded.shape[-1]))  # n-grams of the documents
  with pytest.raises(ValueError, match='FM-index given .* is not over toy'):
    docgen.train_and_evaluate(seal, tc, str(tmp_path / 'seal_sp'), fm=wp_index,
                              **{**seal_kw, 'model': models.EncoderDecoderModel(TINY)})
  run = ranx.Run.from_file(str(tmp_path / 'seal' / 'test.trec'), kind='trec')
  assert run.run and all(set(docs) <= set(c.doc_ids) for docs in run.run.values())
  _exported_retriever_answers_like_the_run(tc, tmp_path / 'seal', 'seal',
                                           text_encoder.WordPieceVocabulary(tiny_bert_dir),
                                           saved_model=False)


def test_dsi_with_title_identifiers(tc, tmp_path):
  """DsiTasks.title_len: every docid example has a twin that targets the
  document's title prefix (EOS-padded); retrieval decodes both identifiers
  under their tries and fuses them; the export says it does not serve it."""
  tasks = dsi.DsiTasks(num_spans=2, title_len=4)
  ids = dsi.fit_docids(ids_lib.AtomicIds(), tc.collection)
  shift = tc.text_vocab_size - ids_lib.NUM_RESERVED_TOKENS
  plain = dsi.examples(tc, ids, shift, dataclasses.replace(tasks, title_len=0),
                              'train', 16, seed=0)
  both = dsi.examples(tc, ids, shift, tasks, 'train', 16, seed=0)
  n = len(plain['encoder_input_tokens'])
  assert len(both['encoder_input_tokens']) == 2 * n
  np.testing.assert_array_equal(both['encoder_input_tokens'][n:], plain['encoder_input_tokens'])
  titles, has_title = dsi.title_codes(tc, 4)
  assert has_title.all()
  first = int(plain['decoder_target_tokens'][0, 0]) - shift - ids.level_offsets[0]
  np.testing.assert_array_equal(both['decoder_target_tokens'][n], titles[first])
  short = dsi.title_codes(tc, 12)[0]  # titles of fewer tokens end in EOS
  assert (short[:, -1] == ids_lib.EOS_ID).all()
  kw = dict(model=models.EncoderDecoderModel(TINY), num_train_steps=300, batch_size=32, input_len=16,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                          warmup_steps=20),
            log_every_steps=100, mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  atomic = dataclasses.replace(docgen.make_method('dsi_atomic'), beam_size=16, tasks=tasks)
  row = docgen.train_and_evaluate(atomic, tc, str(tmp_path), **kw)
  assert row['identifiers'] == 'atomic docid + title prefix (4 tokens)'
  assert row['recall@10'] >= 0.75, row
  run = ranx.Run.from_file(str(tmp_path / 'test.trec'), kind='trec')
  assert all(set(docs) <= set(tc.collection.doc_ids) and len(docs) <= 16
             for docs in run.run.values())
  with pytest.raises(ValueError, match='title identifiers.*not exported'):
    retrieval_export.export(str(tmp_path), k=10, platforms=('cpu',))
