import dataclasses

import numpy as np
import pytest

from genrec import ids as ids_lib
from genrec.retrieval import docgen, dsi


def _docids(name, tc):
  return dsi.fit_docids(docgen.make_method(name).docids, tc.collection)


def test_atomic_and_naive_docids_are_unique_and_decode_back(tc):
  for method, levels in (('dsi_atomic', 1), ('dsi_naive', 2)):
    ids = _docids(method, tc)
    assert ids.num_items == 16 and ids.num_levels == levels and ids.num_collisions == 0
    np.testing.assert_array_equal(ids.tokens_to_items(ids.token_table()[1:]), np.arange(1, 17))
  naive = _docids('dsi_naive', tc)
  np.testing.assert_array_equal(naive.codes[12], [1, 2])  # document "12"
  assert (naive.scheme, _docids('dsi_atomic', tc).scheme) == ('naive-2-digits', 'atomic')


def test_semantic_docids_cluster_the_text_embeddings(tc, monkeypatch):
  # Two well-separated groups of documents: the first level must split them.
  emb = np.zeros((16, 4), np.float32)
  emb[:8, 0], emb[8:, 1] = 1, 1
  emb += np.random.default_rng(0).normal(0, 0.01, emb.shape)
  monkeypatch.setattr(dsi.text_encoder, 'encode', lambda texts, *args, **kw: emb[:len(texts)])
  scheme = ids_lib.HierarchicalKMeansIds(num_levels=2, branching=2)
  ids = dsi.fit_docids(scheme, tc.collection)
  assert ids.num_collisions == 0
  first = ids.codes[1:, 0]
  assert len(set(first[:8])) == 1 and len(set(first[8:])) == 1 and first[0] != first[8]
  # The scheme name that run folders saved when the content was a lambda.
  assert ids.scheme == 'hkmeans-2x2-s0-<lambda>'


def test_dsi_examples_mix_indexing_and_train_queries_only(tc):
  ids = _docids('dsi_atomic', tc)
  tasks = dsi.DsiTasks(num_spans=2, retrieval_repeats=3)
  a = dsi.examples(tc, ids, 100, tasks, 'train', 16, seed=0)
  # per doc: prefix + 2 spans + title; 8 train pairs x 3 repeats.
  assert len(a['encoder_input_tokens']) == 16 * 4 + 8 * 3
  assert set(a['decoder_target_tokens'][:, 0]) == set(ids.token_table()[1:, 0] + 100)
  test_queries = {tuple(tc.query_tokens[f'q{i}']) for i in range(1, 16, 2)}
  inputs = {tuple(r[r > 0]) for r in a['encoder_input_tokens'][16 * 4:]}
  assert not inputs & test_queries


def test_settings_and_labels_read_as_before_the_docids_were_schemes():
  """The run settings' tasks string is the one DsiTasks wrote when it held
  the semantic docids by name (so earlier run folders resume), and the
  identifiers label is the one rows carry."""
  tasks = dsi.DsiTasks(num_spans=2)
  atomic = dsi.Dsi('dsi_atomic', ids_lib.AtomicIds(), tasks)
  assert atomic.tasks_repr() == ('DsiTasks(num_spans=2, retrieval_repeats=4, semantic_branching'
                                 "=10, semantic_levels=3, semantic_scheme='hierarchical')")
  residual = dsi.Dsi('dsi_semantic', ids_lib.ResidualKMeansIds(num_levels=2, codebook_size=128),
                     dataclasses.replace(tasks, title_len=4))
  assert residual.tasks_repr() == ('DsiTasks(num_spans=2, retrieval_repeats=4, semantic_branching'
                                   "=128, semantic_levels=2, semantic_scheme='residual', "
                                   'title_len=4)')
  assert residual.identifiers == ('semantic docid, residual k-means 2 x 128 + title prefix '
                                  '(4 tokens)')
  assert residual.plain_identifiers == 'semantic docid'
  naive = dsi.Dsi('dsi_naive', ids_lib.NaiveDigitIds())
  assert naive.identifiers == naive.base_identifiers == 'naive docid (digits)'
  assert dsi.kmeans_docids('hierarchical', 3, 10) == docgen.SEMANTIC_DOCIDS
  with pytest.raises(ValueError, match="Unknown k-means docids 'pq'"):
    dsi.kmeans_docids('pq', 3, 10)


def test_identifier_views_sum_each_documents_probability():
  """A document's score is the log of its probability summed over views; a
  beam that several documents share gives each an equal part."""
  docid_view = ([[[0], [1], []]], np.log([[0.5, 0.2, 0.1]]))
  title_view = ([[[1, 2], [3]]], np.log([[0.4, 0.05]]))
  ranked, scores = dsi.fuse_identifier_views([docid_view, title_view])
  assert ranked == [[0, 1, 2, 3]]
  np.testing.assert_allclose(np.exp(scores[0]), [0.5, 0.4, 0.2, 0.05])
  ranked, _ = dsi.fuse_identifier_views([docid_view, title_view], k=2)
  assert ranked == [[0, 1]]
  # Far-down beams (log-probs of -1000) still order, without underflow.
  deep = ([[[0], [1], [2]]], np.array([[-1000.0, -1001.0, -np.inf]]))
  ranked, scores = dsi.fuse_identifier_views([deep])
  assert ranked == [[0, 1]] and np.isfinite(scores[0]).all()
