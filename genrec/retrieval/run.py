"""The document-retrieval run mode: one table of methods on a BEIR-style
collection (`python main.py --gin_file=gin/runs/retrieval.gin --workdir=...`).

Trains the collection's SentencePiece vocabulary, then one row per method,
all scored on the same queries: BM25 over that tokenization (the reference),
the three DSI docid schemes and SEAL-style n-gram identifiers
(`genrec.retrieval.docgen`), each trained with the gin files' budget.
Metrics: Recall@1/10/100, nDCG@10, MRR@10. Each method's row is saved as
<workdir>/<method>/row.json, and a method whose folder holds a final
checkpoint is evaluated without training again. Writes
<workdir>/retrieval.md and .csv after every method.
"""

import json
import os
from collections.abc import Sequence

from absl import logging
import gin
import jax
import sentencepiece as spm

from genrec import fm_index, loop, tables
from genrec.retrieval import corpus, docgen

METHODS = ('bm25', *docgen.METHODS)
COLUMNS = ('method', 'recall@1', 'recall@10', 'recall@100', 'ndcg@10', 'ndcg@10_graded', 'mrr@10',
           'queries', 'training', 'train_s', 'ms_per_query', 'params_m', 'tokens')


def row_path(workdir: str, method: str) -> str:
  return os.path.join(workdir, method, 'row.json')


def write_table(rows: list[dict], workdir: str, title: str) -> str:
  """Writes <workdir>/retrieval.md/.csv (process 0) and returns the markdown."""
  md = f'## {title}\n\n' + tables.markdown(rows, COLUMNS)
  if jax.process_index() == 0:
    tables.write(md, rows, workdir, 'retrieval')
  return md


def run(workdir: str, collection: str = 'cranfield', data_dir: str | None = None,
        split: str = 'test', vocab_size: int = 8000,
        methods: Sequence[str] = METHODS, queries_file: str | None = None) -> list[dict]:
  """Trains and evaluates `methods` on `collection`; returns the table's rows.

  Args:
    workdir: where the vocabulary, each method's run folder and the table go.
    collection: a folder under the data dir in BEIR format (corpus.jsonl,
      queries.jsonl, qrels/<split>.tsv), e.g. 'cranfield' or 'scifact'.
    data_dir: the data dir (default $GENREC_DATA_DIR).
    split: the qrels split to evaluate (training uses 'train').
    vocab_size: SentencePiece vocabulary size (an upper bound).
    methods: rows of the table, from METHODS.
    queries_file: optional queries ({"_id", "text"} JSON lines) that every
      generative method also answers from its checkpoint: a TREC run file
      <workdir>/<method>/<file name>.trec each (gin/runs/retrieval_infer.gin).
  """
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f'Unknown retrieval methods {sorted(unknown)}; choose from {METHODS}.')
  loop.make_workdir(workdir)
  c = corpus.load_beir(collection, data_dir)
  model = os.path.join(workdir, f'{collection}_spm{vocab_size}.model')
  if not os.path.exists(model):  # deterministic: parallel invocations may share it
    corpus.train_sentencepiece([corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)],
                               model[:-len('.model')], vocab_size)
  sp = spm.SentencePieceProcessor(model_file=model)
  tc = docgen.TokenizedCollection.build(c, sp)
  fm = fm_index.FMIndex.build(tc.doc_tokens, sp.get_piece_size())
  rows, title = [], f'{collection}, {split} queries'
  for i, method in enumerate(methods):
    logging.info('[%d/%d] %s', i + 1, len(methods), method)
    if method == 'bm25':
      row = corpus.bm25_row(c, sp, split)
    else:
      row = docgen.train_and_evaluate(method, tc, os.path.join(workdir, method),
                                      eval_split=split, fm=fm,
                                      cache_dir=os.path.join(workdir, 'cache'),
                                      queries_file=queries_file)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(row_path(workdir, method)), exist_ok=True)
      with open(row_path(workdir, method), 'w') as f:
        json.dump(row, f, indent=1)
    rows.append(row)
    md = write_table(rows, workdir, title)  # the table so far, after every method
  if jax.process_index() == 0:
    print(md, flush=True)
    with open(os.path.join(workdir, 'config.gin'), 'w') as f:
      f.write(gin.operative_config_str())
  return rows
