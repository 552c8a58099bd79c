import json
import math

import numpy as np
import pytest
import ranx

from conftest import data_dir_or_skip
from genrec.retrieval import corpus


def _write_collection(root, docs, queries, qrels_lines):
  (root / 'qrels').mkdir(parents=True)
  (root / 'corpus.jsonl').write_text('\n'.join(json.dumps(d) for d in docs) + '\n')
  (root / 'queries.jsonl').write_text('\n'.join(json.dumps(q) for q in queries) + '\n')
  (root / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\n' + qrels_lines)


def test_cranfield_loads_with_its_documented_statistics():
  data_dir = data_dir_or_skip('cranfield')
  c = corpus.load_beir('cranfield', data_dir)
  assert c.num_docs == 1400 and len(c.queries) == 225
  assert len(c.qrels['train']) == 113 and len(c.qrels['test']) == 112
  assert sum(len(v) for s in c.grades.values() for v in s.values()) == 1837  # judged
  # 225 pairs (one per query) scored 0, "of no interest": not relevant.
  assert sum(len(v) for s in c.qrels.values() for v in s.values()) == 1837 - 225


def test_malformed_collections_get_clear_errors(tmp_path):
  docs = [{'_id': 'a', 'text': 'x y'}, {'_id': 'b', 'text': 'y z'}]
  _write_collection(tmp_path / 'ok', docs, [{'_id': 'q', 'text': 'y'}], 'q\ta\t1\n')
  assert corpus.load_beir('ok', str(tmp_path)).qrels == {'test': {'q': {'a'}}}
  _write_collection(tmp_path / 'dup', docs + docs[:1], [{'_id': 'q', 'text': 'y'}], '')
  with pytest.raises(corpus.CollectionError, match='duplicate _id'):
    corpus.load_beir('dup', str(tmp_path))
  _write_collection(tmp_path / 'unk', docs, [{'_id': 'q', 'text': 'y'}], 'q\tzz\t1\n')
  with pytest.raises(corpus.CollectionError, match=r"test.tsv:2: unknown doc id 'zz'"):
    corpus.load_beir('unk', str(tmp_path))
  _write_collection(tmp_path / 'bad', docs, [{'_id': 'q'}], '')
  with pytest.raises(corpus.CollectionError, match=r"queries.jsonl:1: missing field"):
    corpus.load_beir('bad', str(tmp_path))
  with pytest.raises(corpus.CollectionError, match='No collection folder'):
    corpus.load_beir('absent', str(tmp_path))


def test_sentencepiece_vocabulary_round_trips(tmp_path):
  texts = [f'the wing {w} of the aircraft in a slipstream number {i}'
           for i, w in enumerate(['span', 'lift', 'drag', 'chord'] * 30)]
  path = corpus.train_sentencepiece(texts, str(tmp_path / 'spm'), vocab_size=60)
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=path)
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
  ids = sp.encode(texts[3])
  assert min(ids) > 2 and sp.decode(ids) == texts[3]


def test_bm25_matches_the_formula():
  docs = [[3, 4, 4, 5], [4, 6], [3, 3, 3, 7, 8, 9], [5]]
  bm25 = corpus.BM25(docs, vocab_size=10, k1=1.2, b=0.75)
  avgdl = sum(map(len, docs)) / 4
  query = [3, 4, 4]

  def score(d):
    s = 0.0
    for t in set(query):
      df = sum(t in x for x in docs)
      idf = math.log(1 + (4 - df + 0.5) / (df + 0.5))
      tf = d.count(t)
      s += query.count(t) * idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(d) / avgdl))
    return s
  np.testing.assert_allclose(bm25.scores(query), [score(d) for d in docs], rtol=1e-5)
  assert list(bm25.search(query, 2)) == list(np.argsort([-score(d) for d in docs])[:2])


def test_metrics_match_ranx():
  rng = np.random.default_rng(0)
  docs = [f'd{i}' for i in range(40)]
  qrels = {f'q{i}': set(rng.choice(docs, rng.integers(1, 6), replace=False)) for i in range(20)}
  run = {q: list(rng.permutation(docs)[:100]) for q in qrels}
  for q in list(qrels)[:5]:  # some queries find a relevant doc first
    run[q].insert(0, sorted(qrels[q])[0])
  ours = corpus.retrieval_metrics(run, qrels)
  r_qrels = ranx.Qrels({q: {d: 1 for d in v} for q, v in qrels.items()})
  r_run = ranx.Run({q: {d: 1000.0 - i for i, d in enumerate(dict.fromkeys(v))}
                    for q, v in run.items()})
  theirs = ranx.evaluate(r_qrels, r_run, ['recall@1', 'recall@10', 'recall@100', 'ndcg@10',
                                          'mrr@10'])
  for k, v in theirs.items():
    assert abs(ours[k] - v) < 1e-9, k


def test_graded_scores_follow_beir_and_match_ranx(tmp_path):
  """Score 0 is judged not relevant; graded nDCG uses the score as the gain."""
  rng = np.random.default_rng(1)
  docs = [f'd{i}' for i in range(30)]
  grades = {}
  for i in range(15):
    judged = rng.choice(docs, rng.integers(2, 8), replace=False)
    grades[f'q{i}'] = {d: int(g) for d, g in zip(judged, rng.integers(0, 5, len(judged)))}
    grades[f'q{i}'][judged[0]] = 3  # at least one relevant
  qrels = {q: {d for d, g in j.items() if g > 0} for q, j in grades.items()}
  run = {q: list(rng.permutation(docs)[:20]) for q in qrels}
  for q in list(qrels)[:6]:  # some rank a judged non-relevant (score 0) document first
    zero = [d for d, g in grades[q].items() if g == 0]
    run[q].insert(0, zero[0] if zero else sorted(qrels[q])[0])
  ours = corpus.retrieval_metrics(run, qrels, grades=grades)
  r_run = ranx.Run({q: {d: 1000.0 - i for i, d in enumerate(dict.fromkeys(v))}
                    for q, v in run.items()})
  graded = ranx.evaluate(ranx.Qrels(grades), r_run, ['ndcg@10', 'recall@10', 'mrr@10'])
  assert abs(ours['ndcg@10_graded'] - graded['ndcg@10']) < 1e-9
  assert abs(ours['recall@10'] - graded['recall@10']) < 1e-9  # score 0 is not relevant
  assert abs(ours['mrr@10'] - graded['mrr@10']) < 1e-9
  binary = ranx.evaluate(ranx.Qrels({q: {d: 1 for d in v} for q, v in qrels.items()}), r_run,
                         'ndcg@10')
  assert abs(ours['ndcg@10'] - binary) < 1e-9
  # The reader keeps the scores and leaves the 0-scored pairs out of the
  # relevant sets; a score that is not an integer is named.
  root = tmp_path / 'toy'
  (root / 'qrels').mkdir(parents=True)
  (root / 'corpus.jsonl').write_text(
      ''.join(f'{{"_id": "{d}", "title": "", "text": "word {d}"}}\n' for d in ('a', 'b', 'c')))
  (root / 'queries.jsonl').write_text('{"_id": "1", "text": "w"}\n{"_id": "2", "text": "x"}\n')
  (root / 'qrels' / 'test.tsv').write_text(
      'query-id\tcorpus-id\tscore\n1\ta\t2\n1\tb\t0\n2\tc\t0\n')
  c = corpus.load_beir('toy', str(tmp_path))
  assert c.qrels['test'] == {'1': {'a'}}  # query 2 has no relevant document
  assert c.grades['test'] == {'1': {'a': 2, 'b': 0}, '2': {'c': 0}}
  (root / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\n1\ta\thigh\n')
  with pytest.raises(corpus.CollectionError, match=r'test.tsv:2: score .high. is not an integer'):
    corpus.load_beir('toy', str(tmp_path))


def test_bm25_row_on_cranfield(tmp_path):
  import sentencepiece as spm
  c = corpus.load_beir('cranfield', data_dir_or_skip('cranfield'))
  texts = [corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)]
  model = corpus.train_sentencepiece(texts, str(tmp_path / 'spm'), 4000)
  row = corpus.bm25_row(c, spm.SentencePieceProcessor(model_file=model), 'test')
  assert row['queries'] == 112 and 0.2 < row['ndcg@10'] < 1.0
  assert row['recall@1'] <= row['recall@10'] <= row['recall@100']
  words = corpus.bm25_row(c, corpus.WordTokenizer(texts), 'test')
  assert words['method'] == 'BM25 words (k1 0.9, b 0.4)' and words['tokens'].startswith('words')
  assert 0.2 < words['ndcg@10'] < 1.0


def test_word_tokens_are_lowercased_words_of_the_corpus():
  words = corpus.WordTokenizer(['The Wing, the flow.', 'Flow-rate'])
  assert words.encode('FLOW of the wing?') == [words.vocab['flow'], words.vocab['the'],
                                              words.vocab['wing']]  # 'of' is not in the corpus
  assert words.get_piece_size() == len(words.vocab) + 1 == 5


def test_missing_and_malformed_collection_files_are_named(tmp_path):
  root = tmp_path / 'c'
  (root / 'qrels').mkdir(parents=True)
  (root / 'corpus.jsonl').write_text(json.dumps({'_id': 'a', 'text': 'x'}) + '\n')
  with pytest.raises(corpus.CollectionError, match='queries.jsonl not found'):
    corpus.load_beir('c', str(tmp_path))
  (root / 'queries.jsonl').write_text('[1, 2]\n')
  with pytest.raises(corpus.CollectionError, match=r'queries.jsonl:1: expected a JSON object'):
    corpus.load_beir('c', str(tmp_path))


def test_tokenized_collection_keeps_the_title_once(tc):
  assert corpus.document_text('a b', 'a b c') == 'a b c'
  assert corpus.document_text('t', 'x y') == 't x y'
  assert (tc.title_lengths > 0).all()
  for toks, n in zip(tc.doc_tokens, tc.title_lengths):
    assert tc.sp.decode(toks[:n].tolist()).startswith('topic')
    assert tc.sp.decode(toks.tolist()).count('topic') == 1
