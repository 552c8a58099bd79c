"""Documents added to a trained retriever without retraining it, end to end:
the retrieval run mode trains on 10 of 12 documents, the add-documents run
mode adds the other two, the re-exported retriever answers with them over
HTTP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import FAST_COMPILE, REPO_ROOT
from genrec import artifact, fm_index, serve
from genrec.ids import ItemIds
from genrec.retrieval import add_documents, corpus


def _main(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE}
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'main.py'), *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)


def _collections(root) -> list[dict]:
  """<root>/toy: 12 documents, 6 training and 6 test queries (titles);
  <root>/toy_old: the first 10 documents and their queries;
  <root>/added.jsonl: the last two documents."""
  rng = np.random.default_rng(0)
  docs = []
  for i in range(12):
    title = f'topic{i} subject{i}'
    docs.append({'_id': f'd{i}', 'title': title,
                 'text': title + ' ' + ' '.join(rng.choice([f'w{j}' for j in range(20)], 12))})
  for name, n in (('toy', 12), ('toy_old', 10)):
    folder = root / name
    (folder / 'qrels').mkdir(parents=True)
    (folder / 'corpus.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs[:n]))
    (folder / 'queries.jsonl').write_text(''.join(
        json.dumps({'_id': f'q{i}', 'text': d['title']}) + '\n' for i, d in enumerate(docs)))
    for split, parity in (('train', 0), ('test', 1)):
      (folder / 'qrels' / f'{split}.tsv').write_text('query-id\tcorpus-id\tscore\n' + ''.join(
          f'q{i}\td{i}\t1\n' for i in range(n) if i % 2 == parity))
  (root / 'added.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs[10:]))
  return docs


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('add_documents')
  root = tmp / 'data'
  docs = _collections(root)
  proc = _main('--gin_file=gin/runs/retrieval.gin', '--gin_file=gin/retrieval/cpu_smoke.gin',
               "--gin_bindings=COLLECTION='toy_old'", f"--gin_bindings=DATA_DIR='{root}'",
               "--gin_bindings=METHODS=('dsi_atomic', 'seal')",
               '--gin_bindings=run.run.vocab_size=100', '--gin_bindings=run.run.dev_fraction=0',
               '--gin_bindings=docgen.train_and_evaluate.num_train_steps=20',
               '--gin_bindings=docgen.train_and_evaluate.batch_size=8',
               '--gin_bindings=docgen.train_and_evaluate.input_len=16', f'--workdir={tmp / "run"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp, root, docs


def _add(tmp, root, method: str, *more: str) -> subprocess.CompletedProcess:
  return _main('--gin_file=gin/runs/add_documents.gin',
               f"--gin_bindings=RETRIEVER='{tmp / 'run' / method}'",
               "--gin_bindings=COLLECTION='toy_old'", f"--gin_bindings=DATA_DIR='{root}'",
               f"--gin_bindings=DOCUMENTS='{root / 'added.jsonl'}'", *more,
               f'--workdir={tmp / (method + "_added")}')


def test_dsi_documents_are_added_and_served_without_retraining(trained):
  tmp, root, docs = trained
  proc = _add(tmp, root, 'dsi_atomic', "--gin_bindings=EVAL_COLLECTION='toy'",
              "--gin_bindings=export.export.platforms=('cpu',)",
              '--gin_bindings=SAVED_MODEL=False')
  assert proc.returncode == 0, proc.stderr[-3000:]
  old, new = tmp / 'run' / 'dsi_atomic', tmp / 'dsi_atomic_added'
  row = json.loads((new / 'row.json').read_text())
  assert row['documents_before'] == 10 and row['documents_added'] == 2
  assert row['queries'] == 6 and 0 <= row['recall@100'] <= 1  # all toy test queries
  assert (new / 'doc_ids.txt').read_text().split() == [d['_id'] for d in docs]
  before, after = ItemIds.load(str(old / 'ids')), ItemIds.load(str(new / 'ids'))
  np.testing.assert_array_equal(after.codes[:11], before.codes)  # old docids unchanged
  assert after.num_items == 12 and after.num_collisions == 0
  assert json.loads((new / 'retrieval_run.json').read_text())['num_docs'] == 12
  # The re-exported retriever ranks as the updated run's evaluation did, and
  # the server answers with the added documents.
  served = artifact.Artifact(str(new / 'serving')).expect('retriever')
  assert served.manifest['platforms'] == ['cpu'] and not served.manifest['saved_model']
  assert served.external_ids()[11:13] == ['d10', 'd11']
  ranked = {}
  for line in (new / 'test.trec').read_text().splitlines():
    q, _, d, *_ = line.split()
    ranked.setdefault(q, []).append(d)
  app = serve.make_app(retriever=str(new / 'serving'), warm_up=False)
  with TestClient(app) as client:
    for q in ('q1', 'q11'):
      r = client.post('/v1/retrieve', json={'query': docs[int(q[1:])]['title'], 'k': 12})
      assert r.status_code == 200 and r.json()['documents'] == ranked[q][:12]
    assert {'d10', 'd11'} <= set(r.json()['documents'])
  # The same command again evaluates the saved update (nothing is added twice).
  again = _add(tmp, root, 'dsi_atomic', "--gin_bindings=EVAL_COLLECTION='toy'",
               '--gin_bindings=EXPORT=False')
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((new / 'row.json').read_text())['recall@100'] == row['recall@100']


def test_seal_gets_an_fm_index_over_the_added_documents(trained):
  tmp, root, docs = trained
  proc = _add(tmp, root, 'seal', '--gin_bindings=EXPORT=False')
  assert proc.returncode == 0, proc.stderr[-3000:]
  fm = fm_index.FMIndex.load(str(tmp / 'seal_added' / 'fm_index'))
  assert fm.num_docs == 12
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(tmp / 'seal_added' / 'spm.model'))
  tokens = sp.encode(corpus.document_text(docs[11]['title'], docs[11]['text']))
  assert 11 in fm.locate(tokens[:6]).tolist()
  with pytest.raises(ValueError, match='needs no replay'):
    add_documents.add(str(tmp / 'x'), retriever=str(tmp / 'run' / 'seal'),
                      documents=str(root / 'added.jsonl'), collection='toy_old',
                      data_dir=str(root), replay_steps=5)


def test_bad_additions_are_refused_by_name(trained, tmp_path):
  tmp, root, docs = trained
  retriever = str(tmp / 'run' / 'dsi_atomic')
  again = tmp_path / 'again.jsonl'
  again.write_text(json.dumps(docs[3]) + '\n' + json.dumps(docs[10]) + '\n')
  kw = dict(retriever=retriever, collection='toy_old', data_dir=str(root), export=False)
  with pytest.raises(corpus.CollectionError, match=r"already has \(e.g. \['d3'\]\)"):
    add_documents.add(str(tmp_path / 'out'), documents=str(again), **kw)
  with pytest.raises(ValueError, match='is not the one'):
    add_documents.add(str(tmp_path / 'out'), documents=str(root / 'added.jsonl'),
                      **{**kw, 'collection': 'toy'})
  with pytest.raises(ValueError, match="the retriever's own folder"):
    add_documents.add(retriever, documents=str(root / 'added.jsonl'), **kw)
