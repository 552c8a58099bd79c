"""Document retrieval data and baselines: BEIR-style collections, a SentencePiece
text vocabulary trained on the corpus, BM25 over that tokenization, and the
retrieval metrics (Recall@1/10/100, nDCG@10 binary and graded, MRR@10).

Files (under <data dir>/<name>/, e.g. cranfield/):
  corpus.jsonl      {"_id", "title", "text", ...} per line
  queries.jsonl     {"_id", "text", ...} per line
  qrels/<split>.tsv query-id <tab> corpus-id <tab> score, with a header line

Scores follow BEIR (and trec_eval, pytrec_eval, ranx): a pair with score > 0
is relevant, 0 (or less) is judged not relevant; binary metrics count the
relevant pairs, graded nDCG uses the score as the gain.
"""

import collections
import dataclasses
import math
import os
import re
import time

import numpy as np
import scipy.sparse as sp
import sentencepiece as spm

from genrec.data import sequences

RETRIEVAL_KS = (1, 10, 100)


class CollectionError(sequences.DataError):
  """A malformed collection file; the message names the file, line and fix."""


@dataclasses.dataclass
class Collection:
  name: str
  doc_ids: list[str]
  titles: list[str]
  texts: list[str]
  queries: dict[str, str]
  # split -> query id -> relevant doc ids (score > 0, as BEIR / trec_eval);
  # queries with no relevant document are left out.
  qrels: dict[str, dict[str, set[str]]]
  # split -> query id -> doc id -> score, every judged pair (0 = not relevant):
  # the gains of graded nDCG.
  grades: dict[str, dict[str, dict[str, int]]] = dataclasses.field(default_factory=dict)

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  def doc_index(self) -> dict[str, int]:
    return {d: i for i, d in enumerate(self.doc_ids)}

  def hold_out(self, fraction: float, source: str = 'train', name: str = 'dev',
               seed: int = 0) -> 'Collection':
    """A copy whose `source` split loses `fraction` of its queries (chosen
    by `seed`, at least one) to a new split `name`: queries to tune on that
    training never sees."""
    if source not in self.qrels:
      raise ValueError(f'{self.name} has no qrels split {source!r} to hold queries out of '
                       f'(has {sorted(self.qrels)}).')
    if name in self.qrels:
      raise ValueError(f'{self.name} already has a qrels split {name!r}.')
    queries = sorted(self.qrels[source], key=lambda q: (len(q), q))
    if not 0 < fraction < 1 or len(queries) < 2:
      raise ValueError(f'hold_out needs 0 < fraction < 1 and 2 or more {source} queries; got '
                       f'fraction {fraction} and {len(queries)} queries.')
    n = max(1, round(fraction * len(queries)))
    held = set(np.random.default_rng(seed).choice(queries, n, replace=False).tolist())
    qrels, grades = dict(self.qrels), dict(self.grades)
    for split, held_in in ((source, False), (name, True)):
      qrels[split] = {q: r for q, r in self.qrels[source].items() if (q in held) == held_in}
      if source in self.grades:
        grades[split] = {q: g for q, g in self.grades[source].items()
                         if (q in held) == held_in}
    return dataclasses.replace(self, qrels=qrels, grades=grades)


def _require(path: str) -> None:
  if not os.path.exists(path):
    raise CollectionError(f'{path} not found; a BEIR collection folder holds corpus.jsonl, '
                          'queries.jsonl and qrels/<split>.tsv.')


def _lines(path: str) -> list[str]:
  _require(path)
  try:
    return sequences.read_lines(path)
  except sequences.DataError as e:
    raise CollectionError(str(e)) from None


def _read_jsonl(path: str, required: tuple[str, ...]) -> list[dict]:
  _require(path)
  rows = []
  for where, row in sequences.json_objects(path, 'one JSON object per line', CollectionError):
    missing = [k for k in required if k not in row]
    if missing:
      raise CollectionError(f'{where}: missing field(s) {missing}; every line needs '
                            f'{list(required)}.')
    bad = [k for k in required if not isinstance(row[k], (str, int)) or isinstance(row[k], bool)]
    if bad or ('title' in row and not isinstance(row['title'], (str, type(None)))):
      raise CollectionError(f'{where}: {bad[0] if bad else "title"} must be a string.')
    rows.append(row)
  return rows


def read_queries(path: str) -> dict[str, str]:
  """{query id: text} of a queries file in BEIR format ({"_id", "text"} lines)."""
  queries = {str(r['_id']): r['text'] for r in _read_jsonl(path, ('_id', 'text'))}
  if not queries:
    raise CollectionError(f'{path}: no queries; the file is empty.')
  return queries


def load_beir(name: str, data_dir: str | None = None) -> Collection:
  """Reads a BEIR-style collection from <data dir>/<name>, validating it."""
  root = os.path.join(sequences.resolve_data_dir(data_dir), name)
  if not os.path.isdir(root):
    raise CollectionError(f'No collection folder {root}; set DATA_DIR / $GENREC_DATA_DIR to '
                          'the folder that holds it.')
  corpus = _read_jsonl(os.path.join(root, 'corpus.jsonl'), ('_id', 'text'))
  doc_ids = [str(r['_id']) for r in corpus]
  dup = [d for d, c in collections.Counter(doc_ids).items() if c > 1]
  if dup:
    raise CollectionError(f'{root}/corpus.jsonl: duplicate _id(s) {dup[:5]}; ids must be '
                          'unique.')
  queries = {str(r['_id']): r['text']
             for r in _read_jsonl(os.path.join(root, 'queries.jsonl'), ('_id', 'text'))}
  known = set(doc_ids)
  qrels, grades = {}, {}
  qrels_dir = os.path.join(root, 'qrels')
  for fname in sorted(os.listdir(qrels_dir)) if os.path.isdir(qrels_dir) else []:
    if not fname.endswith('.tsv'):
      continue
    path = os.path.join(qrels_dir, fname)
    split = collections.defaultdict(dict)
    for n, line in enumerate(_lines(path), 1):
      parts = line.split('\t')
      if n == 1 and parts[0] == 'query-id':
        continue
      if len(parts) != 3:
        raise CollectionError(f'{path}:{n}: expected "query-id<TAB>corpus-id<TAB>score", '
                              f'got {line.strip()[:80]!r}.')
      qid, did = parts[0], parts[1]
      if qid not in queries or did not in known:
        raise CollectionError(f'{path}:{n}: unknown {"query" if qid not in queries else "doc"}'
                              f' id {qid if qid not in queries else did!r}; qrels may only '
                              'name ids of queries.jsonl and corpus.jsonl.')
      try:
        split[qid][did] = int(parts[2])
      except ValueError:
        raise CollectionError(f'{path}:{n}: score {parts[2].strip()!r} is not an integer '
                              '(BEIR: higher = more relevant, 0 = judged not relevant).'
                              ) from None
    grades[fname[:-4]] = dict(split)
    qrels[fname[:-4]] = {q: {d for d, g in judged.items() if g > 0}
                         for q, judged in split.items() if max(judged.values()) > 0}
  if not qrels:
    raise CollectionError(f'{qrels_dir} holds no <split>.tsv files.')
  return Collection(name, doc_ids, [str(r.get('title', '')) for r in corpus],
                    [r['text'] for r in corpus], queries, qrels, grades)


def document_text(title: str, text: str) -> str:
  """A document's title and text, the title once (cranfield's texts start with it)."""
  title, text = title.strip(), text.strip()
  if not title or text.startswith(title):
    return text
  return f'{title} {text}'.strip()


# ---------------------------------------------------------------------------
# Tokenized collection
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class TokenizedCollection:
  """A collection with its SentencePiece tokens (or WordPiece ones:
  `text_encoder.WordPieceVocabulary` has the interface used of `sp`).

  doc_tokens[i]: the document's title and text (the title once: cranfield's
  texts repeat it) as token ids >= 1; title_lengths[i]: how many of those
  tokens are the title (0 when it has none or the text does not start with it).
  """
  collection: Collection
  sp: spm.SentencePieceProcessor
  doc_tokens: list[np.ndarray]
  title_lengths: np.ndarray
  query_tokens: dict[str, np.ndarray]

  @property
  def text_vocab_size(self) -> int:
    return self.sp.get_piece_size()

  @property
  def tokens(self) -> str:
    """'SentencePiece <size>' or 'WordPiece <size>', for a results row."""
    # Imported here: the encoder pulls in jax and flax, which readers of
    # collections and BM25 do not need.
    from genrec import text_encoder
    kind = 'WordPiece' if isinstance(self.sp, text_encoder.WordPieceVocabulary) else (
        'SentencePiece')
    return f'{kind} {self.text_vocab_size}'

  @classmethod
  def build(cls, c: Collection, sp: spm.SentencePieceProcessor) -> 'TokenizedCollection':
    """Tokenizes the documents (title, then text) and the queries of `c` with `sp`."""
    docs, title_lengths = [], []
    for i in range(c.num_docs):
      title, text = c.titles[i].strip(), c.texts[i].strip()
      title_toks = sp.encode(title) if title else []
      full = document_text(title, text)
      toks = sp.encode(full) if full else []
      docs.append(np.asarray(toks or [sp.unk_id()], np.int32))
      title_lengths.append(len(title_toks) if toks[:len(title_toks)] == title_toks else 0)
    queries = {q: np.asarray(sp.encode(t), np.int32) for q, t in c.queries.items()}
    return cls(c, sp, docs, np.asarray(title_lengths), queries)


# ---------------------------------------------------------------------------
# Text vocabulary
# ---------------------------------------------------------------------------
def train_sentencepiece(texts: list[str], model_prefix: str, vocab_size: int = 8000,
                        model_type: str = 'unigram') -> str:
  """Trains a SentencePiece model on `texts`; returns the .model path.

  `vocab_size` is an upper bound (small corpora may yield fewer pieces).
  Ids: 0 pad, 1 eos, 2 unk (T5's layout, so the model plugs into
  `seqio.SentencePieceVocabulary`); no bos. Training is deterministic and the
  files appear whole (written aside, then renamed), so several processes of
  a job may train the same model at once and read it any time.
  """
  os.makedirs(os.path.dirname(model_prefix) or '.', exist_ok=True)
  tmp = f'{model_prefix}.tmp{os.getpid()}'
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([t for t in texts if t.strip()]), model_prefix=tmp,
      vocab_size=vocab_size, model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, num_threads=1, hard_vocab_limit=False,
      minloglevel=2)
  os.replace(tmp + '.vocab', model_prefix + '.vocab')
  os.replace(tmp + '.model', model_prefix + '.model')  # last: its presence means done
  return model_prefix + '.model'


def text_vocabulary(model_path: str):
  """The SentencePiece model as a seqio vocabulary (seqio imports TensorFlow)."""
  import seqio
  return seqio.SentencePieceVocabulary(model_path)


# ---------------------------------------------------------------------------
# BM25
# ---------------------------------------------------------------------------
class BM25:
  """Okapi BM25 over token-id documents (idf = ln(1 + (N - df + .5) / (df + .5)))."""

  def __init__(self, docs: list[list[int]], vocab_size: int, k1: float = 0.9, b: float = 0.4):
    rows = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    cols = np.concatenate([np.asarray(d, np.int64) for d in docs]) if docs else np.zeros(0)
    tf = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                       shape=(len(docs), vocab_size))
    tf.sum_duplicates()
    n = len(docs)
    df = np.bincount(tf.indices, minlength=vocab_size)
    self.idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    lengths = np.asarray([len(d) for d in docs], np.float32)
    norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
    tf = tf.tocoo()
    weights = tf.data * (k1 + 1) / (tf.data + norm[tf.row])
    # [vocab, docs]: a query's scores are a sum of its terms' rows.
    self.term_doc = sp.csr_matrix((weights, (tf.col, tf.row)), shape=(vocab_size, n))

  def scores(self, query: list[int]) -> np.ndarray:
    counts = collections.Counter(int(t) for t in query)
    terms = np.array(list(counts), np.int64)
    qw = np.array([counts[t] for t in terms], np.float32) * self.idf[terms]
    return np.asarray(self.term_doc[terms].T @ qw).ravel()

  def search(self, query: list[int], k: int = 100) -> np.ndarray:
    return self.search_scores(self.scores(query), k)

  @staticmethod
  def search_scores(s: np.ndarray, k: int = 100) -> np.ndarray:
    """The indices of the top `k` of scores `s`, by score then index."""
    k = min(k, len(s))
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.lexsort((top, -s[top]))]  # by score, then doc index


WORD = re.compile(r'\w+')


class WordTokenizer:
  """Lowercased word tokens (`\\w+`, no stemming) numbered over a corpus:
  the tokens of the usual BM25 baselines, behind the interface `bm25_row`
  uses of a SentencePiece model (`encode`, `get_piece_size`); a query word
  the corpus lacks is dropped (it matches no document)."""

  def __init__(self, texts: list[str]):
    self.vocab: dict[str, int] = {}
    for text in texts:
      for w in WORD.findall(text.lower()):
        self.vocab.setdefault(w, len(self.vocab) + 1)

  def encode(self, text: str) -> list[int]:
    return [self.vocab[w] for w in WORD.findall(text.lower()) if w in self.vocab]

  def get_piece_size(self) -> int:
    return len(self.vocab) + 1


def bm25_row(c: Collection, sp: spm.SentencePieceProcessor, split: str,
             run_dir: str | None = None, run_splits: tuple[str, ...] = ()) -> dict:
  """BM25 over `sp`'s tokens of title + text (a SentencePiece model, or a
  `WordTokenizer`), evaluated on `split`: a table row. With `run_dir`, also
  writes <run_dir>/<s>.trec for `split` and each of `run_splits` (the runs a
  hybrid fuses)."""
  t0 = time.perf_counter()
  docs = [sp.encode(document_text(t, x)) for t, x in zip(c.titles, c.texts)]
  index = BM25(docs, sp.get_piece_size())
  build_s = time.perf_counter() - t0

  def search(qids):
    ranked, scores = {}, {}
    for q in qids:
      s = index.scores(sp.encode(c.queries[q]))
      top = index.search_scores(s, 100)
      ranked[q], scores[q] = [c.doc_ids[i] for i in top], s[top].tolist()
    return ranked, scores
  qrels = c.qrels[split]
  t0 = time.perf_counter()
  ranked, scores = search(qrels)
  query_ms = (time.perf_counter() - t0) / len(qrels) * 1e3
  if run_dir:
    os.makedirs(run_dir, exist_ok=True)
    write_trec_run(os.path.join(run_dir, f'{split}.trec'), ranked, scores, 'bm25')
    for other in run_splits:
      write_trec_run(os.path.join(run_dir, f'{other}.trec'), *search(c.qrels[other]), 'bm25')
  m = retrieval_metrics(ranked, qrels, grades=c.grades.get(split))
  words = isinstance(sp, WordTokenizer)
  return {'method': f'BM25{" words" if words else ""} (k1 0.9, b 0.4)',
          'tokens': f'words {sp.get_piece_size()}' if words else
                    f'SentencePiece {sp.get_piece_size()}',
          **{k: round(v, 4) for k, v in m.items()}, 'queries': len(qrels),
          'training': 'none', 'index_s': round(build_s, 2), 'ms_per_query': round(query_ms, 2)}


def write_trec_run(path: str, ranked: dict[str, list[str]], scores: dict[str, list[float]],
                   tag: str) -> None:
  """Writes a TREC run file: `qid Q0 docid rank score tag` per line (rank from 1),
  readable by trec_eval, pytrec_eval and ranx.

  Those tools re-sort by score and break ties their own way, so tied scores
  are nudged down (by 1e-9 relative) to keep the run's order.
  """
  with open(path, 'w') as f:
    for q, docs in ranked.items():
      prev = math.inf
      for rank, (d, s) in enumerate(zip(docs, scores[q]), 1):
        s = min(float(s), prev - 1e-9 * max(1.0, abs(prev))) if rank > 1 else float(s)
        prev = s
        f.write(f'{q} Q0 {d} {rank} {s:.15g} {tag}\n')


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def per_query_metrics(ranked: dict[str, list[str]], qrels: dict[str, set[str]],
                      ks=RETRIEVAL_KS, grades: dict[str, dict[str, int]] | None = None
                      ) -> dict[str, dict[str, float]]:
  """Each qrels query's Recall@k, nDCG@10 and MRR@10 (binary relevance), and
  with `grades` (query -> doc -> score) graded nDCG@10 (the score as the
  gain, linear, as trec_eval, pytrec_eval and ranx); a query missing from
  `ranked` scores 0. For paired tests (genrec.retrieval.significance)."""
  out = {}
  for qid, relevant in qrels.items():
    run = list(dict.fromkeys(ranked.get(qid, [])))  # a document counts once
    hits = [d in relevant for d in run]
    m = {f'recall@{k}': sum(hits[:k]) / len(relevant) for k in ks}
    m['ndcg@10'] = _ndcg([float(h) for h in hits[:10]], [1.0] * len(relevant))
    first = next((i for i, h in enumerate(hits[:10]) if h), None)
    m['mrr@10'] = 0.0 if first is None else 1 / (first + 1)
    if grades is not None:
      gain = {d: g for d, g in grades.get(qid, {}).items() if g > 0}
      m['ndcg@10_graded'] = _ndcg([float(gain.get(d, 0)) for d in run[:10]],
                                  list(gain.values()))
    out[qid] = m
  return out


def retrieval_metrics(ranked: dict[str, list[str]], qrels: dict[str, set[str]],
                      ks=RETRIEVAL_KS, grades: dict[str, dict[str, int]] | None = None
                      ) -> dict[str, float]:
  """`per_query_metrics` averaged over the qrels' queries."""
  out = collections.defaultdict(float)
  for m in per_query_metrics(ranked, qrels, ks, grades).values():
    for k, v in m.items():
      out[k] += v
  n = max(len(qrels), 1)
  return {k: v / n for k, v in out.items()}


def _ndcg(gains: list[float], ideal: list[float], k: int = 10) -> float:
  """nDCG@k of ranked gains against the judged gains (linear gain, log2 discount)."""
  dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
  best = sorted(ideal, reverse=True)[:k]
  idcg = sum(g / math.log2(i + 2) for i, g in enumerate(best))
  return dcg / idcg if idcg > 0 else 0.0
