import dataclasses
import json

import jax
import numpy as np
import pytest

from conftest import tiny_encoder_decoder
from genrec import ids as ids_lib
from genrec import partitioning, trainer
from genrec.retrieval import docgen, dsi, pseudo_queries, seal_method


def test_pseudo_queries_are_generated_once_and_index_every_document(tc, tmp_path):
  arrays = pseudo_queries.generator_examples(tc, 'train', 16, 8)
  # 8 train (doc -> query) pairs and 16 (text after the title -> title); every
  # target ends with EOS, and the padding after it counts in the loss.
  assert len(arrays['decoder_target_tokens']) == 8 + 16
  assert all(pseudo_queries.EOS in t for t in arrays['decoder_target_tokens'])
  assert arrays['decoder_loss_weights'].all()
  qg = pseudo_queries.QueryGeneration(num_queries=2, query_len=8, num_train_steps=30,
                                      batch_size=16)
  args = (tc, qg, str(tmp_path), tiny_encoder_decoder(),
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
  ids = dsi.fit_docids(ids_lib.AtomicIds(), tc.collection)
  tasks = dsi.DsiTasks(num_spans=2)
  plain = dsi.examples(tc, ids, 0, tasks, 'train', 16, 0)
  more = dsi.examples(tc, ids, 0, tasks, 'train', 16, 0, pq)
  added = sum(map(len, pq))
  assert len(more['encoder_input_tokens']) == len(plain['encoder_input_tokens']) + added
  seal_tasks = seal_method.SealTasks(ngram_len=4, span_input_len=8)
  assert (len(seal_method.examples(tc, seal_tasks, 'train', 16, 0, pq)['encoder_input_tokens'])
          > len(seal_method.examples(tc, seal_tasks, 'train', 16, 0)['encoder_input_tokens']))


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
    docgen.train_and_evaluate(docgen.make_method('dsi_atomic'), tc, str(tmp_path / 'run'),
                              query_generation=qg)
