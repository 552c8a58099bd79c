"""The document-retrieval run mode: one table of methods on a BEIR-style
collection (`python main.py --gin_file=gin/runs/retrieval.gin --workdir=...`).

Trains the collection's SentencePiece vocabulary, then one row per method,
all scored on the same queries: BM25 over that tokenization (the reference),
the three DSI docid schemes and SEAL-style n-gram identifiers
(`genrec.retrieval.docgen`: `dsi`, `seal_method`), each trained with the gin
files' budget.
Metrics: Recall@1/10/100, nDCG@10, MRR@10, and p_vs_bm25 (a paired
randomization test of each generative or hybrid row's per-query nDCG@10
against BM25's, `significance`; p_r@1_vs_bm25 and p_mrr@10_vs_bm25 the same
on Recall@1 and MRR@10). 'bm25_words' is BM25 over lowercased words instead
of the SentencePiece tokens (the usual baseline's tokens; no hybrid uses it).
Each method's row is saved as <workdir>/<method>/row.json, and a method whose folder holds a final
checkpoint is evaluated without training again. Writes
<workdir>/retrieval.md and .csv after every method.
"""

import dataclasses
import json
import os
import re
import resource
from collections.abc import Sequence

from absl import logging
import gin
import jax
import sentencepiece as spm

from genrec import fm_index, loop, tables
from genrec.retrieval import corpus, docgen, dsi, fusion, significance

METHODS = ('bm25', 'bm25_words', *docgen.METHODS, 'hybrid')
# The paired tests of a row against BM25: column -> per-query metric.
P_COLUMNS = {'p_vs_bm25': 'ndcg@10', 'p_r@1_vs_bm25': 'recall@1', 'p_mrr@10_vs_bm25': 'mrr@10'}
COLUMNS = ('method', 'recall@1', 'recall@10', 'recall@100', 'ndcg@10', 'ndcg@10_graded', 'mrr@10',
           *P_COLUMNS, 'queries', 'train_queries', 'pseudo_queries', 'training', 'train_s',
           'ms_per_query', 'first_batch_s', 'params_m', 'peak_rss_gib', 'tokens', 'init',
           'identifiers', 'machine', 'date', 'commit', 'command')
DEV = 'dev'  # training queries held out of every method's training, to tune on


def row_path(workdir: str, method: str) -> str:
  return os.path.join(workdir, method, 'row.json')


# The summary above the full table: what a row is and its main figures.
SUMMARY_COLUMNS = ('method', 'init', 'identifiers', 'pseudo-queries', 'params_m', 'training',
                   'ndcg@10', 'p_vs_bm25', 'recall@1', 'mrr@10', 'recall@100', 'ms_per_query')


def _pseudo_queries_cell(row: dict) -> str:
  """Pseudo-queries per document, how they were decoded or which file gave
  them (rows from before `query_source`: the file named in their command)."""
  per_doc = row.get('pseudo_queries')
  if not per_doc:
    return ''
  source = row.get('query_decoding') or row.get('query_source')
  if not source:
    named = re.search(r"queries_file='([^']+)'", str(row.get('command', '')))
    source = os.path.basename(named.group(1)) if named else ''
  distinct, kept = row.get('pseudo_distinct'), row.get('query_filter')
  return (f'{per_doc}/doc' + (f', {source}' if source else '') +
          (f', {distinct:.0%} distinct' if isinstance(distinct, float) else '') +
          (f', {kept}' if kept else ''))


# What a hybrid row repeats of its generative row's pseudo-queries.
QUERY_FIELDS = ('query_decoding', 'query_source', 'query_filter', 'pseudo_distinct',
                'pseudo_train_copies')


def _generative_method(row: dict) -> str:
  """The generative method of a row ('dsi_atomic' of 'hybrid: BM25 +
  dsi_atomic, RRF (k 60)'), or '' for BM25."""
  named = re.match(r'(?:hybrid: BM25 \+ )?(\w+)', row['method'])
  return named.group(1) if named and named.group(1) in docgen.METHODS else ''


BM25_LABEL = 'BM25 (k1 0.9, b 0.4)'  # the row of the run mode's 'bm25' (its hybrids' BM25)


def run_command(row: dict) -> str | None:
  """The command of the run a row belongs to: a hybrid row's generative
  row's command (`generative_command`: a later invocation may fuse a saved
  generative run again), else the row's own."""
  return row.get('generative_command') or row.get('command')


def _fuses(hybrid: dict, row: dict) -> bool:
  """Whether `hybrid` is a hybrid row fusing BM25 with the run of `row`."""
  return (hybrid['method'].startswith('hybrid') and _generative_method(hybrid) == row['method']
          and run_command(hybrid) == row.get('command'))


# The alpha in a dev-tuned hybrid's label ('hybrid: BM25 + M, alpha 0.3 tuned on dev').
TUNED_ALPHA = re.compile(r'alpha ([\d.]+)(?= tuned)')


def trec_path(workdir: str, row: dict, split: str) -> str | None:
  """The run file behind a generative or hybrid row of `workdir`'s table
  (None for BM25's): <method>/<split>.trec, or
  hybrid/<method>/hybrid_{rrf,alpha}_<split>.trec."""
  method = _generative_method(row)
  if not method:
    return None
  if row['method'].startswith('hybrid'):
    tag = 'hybrid_rrf' if ', RRF' in row['method'] else 'hybrid_alpha'
    return os.path.join(workdir, 'hybrid', method, f'{tag}_{split}.trec')
  return os.path.join(workdir, method, f'{split}.trec')


def p_vs_bm25_files(workdir: str, row: dict, split: str) -> tuple[str, str] | None:
  """The run files of `row` and of BM25 in `workdir` when `row` lacks one
  of the P_COLUMNS and both exist, else None."""
  mine, bm25 = trec_path(workdir, row, split), os.path.join(workdir, 'bm25', f'{split}.trec')
  if all(row.get(c) not in (None, '') for c in P_COLUMNS) or not mine or not all(
      map(os.path.exists, (mine, bm25))):
    return None
  return mine, bm25


def with_p_vs_bm25(workdir: str, row: dict, qrels: dict[str, set[str]], split: str) -> dict:
  """`row` with the P_COLUMNS it lacks: the paired randomization test's
  p-value of its per-query nDCG@10 (p_vs_bm25), Recall@1 and MRR@10 against
  BM25's of the same folder (`significance`), from the run files
  (`p_vs_bm25_files`; else `row` unchanged)."""
  files = p_vs_bm25_files(workdir, row, split)
  if not files:
    return row
  mine, bm25 = (fusion.read_trec_run(f)[0] for f in files)
  return {**row, **{c: round(significance.p_value(mine, bm25, qrels, metric), 4)
                    for c, metric in P_COLUMNS.items() if row.get(c) in (None, '')}}


def compare_runs(base: str, other: str, qrels: dict[str, set[str]], split: str = 'test'
                 ) -> list[dict]:
  """Run folder `other` against `base`, method by method (each generative
  method and its dev-tuned hybrid, where both folders hold its run file):
  nDCG@10 of both on `qrels` and the paired randomization test's p-value
  (`significance`), e.g. a run with pseudo-queries against one without."""
  out = []
  for method in docgen.METHODS:
    for label, name in ((method, os.path.join(method, f'{split}.trec')),
                        (f'hybrid: BM25 + {method}, alpha tuned on {DEV}',
                         os.path.join('hybrid', method, f'hybrid_alpha_{split}.trec'))):
      files = [os.path.join(d, name) for d in (base, other)]
      if not all(map(os.path.exists, files)):
        continue
      a, b = (fusion.read_trec_run(f)[0] for f in files)
      out.append({'method': label,
                  **{f'ndcg@10 {which}': round(corpus.retrieval_metrics(r, qrels)['ndcg@10'], 4)
                     for which, r in (('base', a), ('other', b))},
                  'p': round(significance.p_value(b, a, qrels), 4)})
  return out


def _recorded_semantic_docids(row: dict):
  """The semantic docids of a row's command from before they were a scheme
  object: its DsiTasks.semantic_* bindings, else their defaults then."""
  fields = {'semantic_scheme': 'hierarchical', 'semantic_levels': 3, 'semantic_branching': 10}
  for name, default in fields.items():
    bound = re.search(rf"DsiTasks\.{name}\s*=\s*'?(\w+)", str(row.get('command', '')))
    if bound:
      fields[name] = type(default)(bound.group(1))
  return dsi.kmeans_docids(fields['semantic_scheme'], fields['semantic_levels'],
                           fields['semantic_branching'])


def _identifiers_cell(row: dict) -> str:
  """The row's identifiers. Rows from before `identifiers` named the DSI
  scheme: 'docid' for all three (or nothing, with SEAL's n-grams); the
  scheme comes from the method and the DsiTasks bindings in the command."""
  method, ident = _generative_method(row), row.get('identifiers') or ''
  if not method or row.get('training', 'none') == 'none' or (
      ident and not ident.startswith('docid')):
    return ident
  m = docgen.make_method(method, dsi_semantic_docids=_recorded_semantic_docids(row))
  return m.base_identifiers + ident[len('docid'):]


def summary_rows(rows: list[dict]) -> list[dict]:
  """The summary's rows: SUMMARY_COLUMNS of every row. Trained rows from
  before the `init` and `identifiers` columns were all of the default
  architecture from random weights; hybrid rows from before they repeated
  their generative row's pseudo-query fields take them from it (same
  method and command)."""
  out = []
  for r in rows:
    if r['method'].startswith('hybrid') and r.get('pseudo_queries') and not any(
        r.get(k) for k in QUERY_FIELDS):
      gen = [g for g in rows if _fuses(r, g)]
      r = {**r, **({k: gen[0][k] for k in QUERY_FIELDS if gen[0].get(k)} if gen else {})}
    s = {c: r.get(c, '') for c in SUMMARY_COLUMNS}
    if r.get('training', 'none') != 'none':
      s['init'] = s['init'] or 'random'
    out.append({**s, 'identifiers': _identifiers_cell(r),
                'pseudo-queries': _pseudo_queries_cell(r)})
  return out


# The grid: each generative method by initialization and pseudo-queries.
GRID_COLUMNS = ('method', 'random init', 'random init + pseudo-queries', 'pretrained init',
                'pretrained init + pseudo-queries')
GRID_NAMES = {'dsi_atomic': 'DSI atomic', 'dsi_naive': 'DSI naive', 'dsi_semantic': 'DSI semantic',
              'seal': 'SEAL'}


def _grid_entry(row: dict, summary: dict, hybrids: list[dict], bm25: float | None) -> str:
  """One run in a grid cell: nDCG@10 ('*' above BM25, '†' different from it
  at p < significance.ALPHA), budget, parameters, identifiers beyond the
  method's plain ones, pseudo-queries per document, and the hybrid tuned on
  dev queries (alpha) of the same run."""
  def mark(r: dict) -> str:
    ndcg, p = float(r['ndcg@10']), r.get('p_vs_bm25')
    return (f'{ndcg:.4f}' + ('*' if bm25 is not None and ndcg > bm25 else '') +
            ('†' if p not in (None, '') and float(p) < significance.ALPHA else ''))

  budget = re.match(r'\d+ x \d+', str(row.get('training', '')))
  ident, plain = summary['identifiers'], docgen.make_method(row['method']).plain_identifiers
  # SEAL's n-gram length is its method's setting, not an addition of the run.
  ident = '' if row['method'] == 'seal' else (
      ident[len(plain):].lstrip(', ') if ident.startswith(plain) else ident)
  per_doc, params = row.get('pseudo_queries'), row.get('params_m')
  details = [d for d in (budget and budget.group(0), params and f'{float(params):.1f}M', ident,
                         per_doc and f'{float(per_doc):g}/doc') if d]
  entry = mark(row) + (f" ({', '.join(details)})" if details else '')
  for h in hybrids:
    alpha = TUNED_ALPHA.search(h['method'])
    if alpha:
      entry += f'; hybrid (alpha {alpha.group(1)}) {mark(h)}'
  return entry


def grid_rows(rows: list[dict], summary: list[dict] | None = None
              ) -> tuple[list[dict], float | None]:
  """The grid under the summary: one row per generative method, one column
  per initialization (random, pretrained) with and without pseudo-queries;
  each cell lists the table's runs of that kind (`_grid_entry`), in table
  order. `summary`: summary_rows(rows), if the caller has it. Returns the
  rows and the first BM25 row's nDCG@10 (the '*' mark)."""
  bm25 = next((float(r['ndcg@10']) for r in rows if r['method'].startswith('BM25')
               and r.get('ndcg@10') not in (None, '')), None)
  cells = {m: {} for m in docgen.METHODS}
  for r, s in zip(rows, summary if summary is not None else summary_rows(rows)):
    if r['method'] not in docgen.METHODS or r.get('ndcg@10') in (None, ''):
      continue
    column = (('random init' if s['init'] in ('', 'random') else 'pretrained init') +
              (' + pseudo-queries' if r.get('pseudo_queries') else ''))
    hybrids = [h for h in rows if _fuses(h, r)]
    cells[r['method']].setdefault(column, []).append(_grid_entry(r, s, hybrids, bm25))
  return [{'method': GRID_NAMES[m],
           **{c: '<br>'.join(cells[m].get(c, ['-'])) for c in GRID_COLUMNS[1:]}}
          for m in docgen.METHODS if cells[m]], bm25


def write_table(rows: list[dict], workdir: str, title: str, stem: str = 'retrieval') -> str:
  """Writes <workdir>/<stem>.md/.csv (process 0) and returns the markdown: a
  summary (SUMMARY_COLUMNS), the grid (`grid_rows`), then every column with
  the row's command."""
  summary = summary_rows(rows)
  grid, bm25 = grid_rows(rows, summary)
  md = f'## {title}\n\n### Summary\n\n' + tables.markdown(summary, SUMMARY_COLUMNS)
  if grid:
    md += ('\n\n### nDCG@10 by initialization and pseudo-queries\n\n' +
           (f'\\* above BM25 ({bm25:.4f}); † different from BM25 at p < {significance.ALPHA:g} '
            '(paired randomization test on per-query nDCG@10, p_vs_bm25). '
            if bm25 is not None else '') +
           'Each run: (steps x batch, parameters, identifiers, pseudo-queries per document); '
           'hybrid: fused with BM25, alpha tuned on dev queries; - not run.\n\n' +
           tables.markdown(grid, GRID_COLUMNS))
  md += '\n\n### Every figure, with its command\n\n' + tables.markdown(rows, COLUMNS)
  if jax.process_index() == 0:
    tables.write(md, rows, workdir, stem)
  return md


def hybrid_rows(workdir: str, c: corpus.Collection, split: str, rows: list[dict]) -> list[dict]:
  """BM25 fused with each generative method of `rows`, from their run files
  (<workdir>/<method>/<split or dev>.trec): a reciprocal-rank-fusion row and
  an interpolation row whose alpha is tuned on the dev queries."""
  bm25 = os.path.join(workdir, 'bm25')
  missing = [f for f in (f'{bm25}/{split}.trec', f'{bm25}/{DEV}.trec') if not os.path.exists(f)]
  if missing or DEV not in c.qrels:
    raise ValueError(f'The hybrid rows fuse BM25 with generative runs and tune on the {DEV!r} '
                     f'queries: run it with methods that include bm25 (missing: {missing}) '
                     'and a dev_fraction > 0 (run.run.dev_fraction).')
  by_method = {}
  for m in ('bm25', *docgen.METHODS):  # rows of this invocation, else saved ones
    saved = row_path(workdir, m)
    if os.path.exists(saved):
      with open(saved) as f:
        by_method[m] = json.load(f)
  by_method |= {('bm25' if r['method'] == BM25_LABEL else r['method']): r for r in rows}
  base = by_method.get('bm25', {})
  qrels, out = c.qrels[split], []
  lex = {s: fusion.read_trec_run(f'{bm25}/{s}.trec') for s in (split, DEV)}
  for method in docgen.METHODS:
    runs = {s: os.path.join(workdir, method, f'{s}.trec') for s in (split, DEV)}
    if method not in by_method or not all(map(os.path.exists, runs.values())):
      continue
    gen = {s: fusion.read_trec_run(p) for s, p in runs.items()}
    alpha, curve = fusion.tune_alpha(lex[DEV], gen[DEV], c.qrels[DEV])
    fused = {'RRF (k 60)': fusion.reciprocal_rank_fusion([lex[split], gen[split]]),
             f'alpha {alpha:g} tuned on {DEV}':
             fusion.interpolate(lex[split], gen[split], alpha)}
    g = by_method[method]
    for how, (ranked, scores) in fused.items():
      name = f'hybrid: BM25 + {method}, {how}'
      tag = 'hybrid_rrf' if how.startswith('RRF') else 'hybrid_alpha'
      if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, 'hybrid', method), exist_ok=True)
        corpus.write_trec_run(os.path.join(workdir, 'hybrid', method, f'{tag}_{split}.trec'),
                              ranked, scores, tag)
      m = corpus.retrieval_metrics(ranked, qrels, grades=c.grades.get(split))
      out.append({'method': name, **{k: round(v, 4) for k, v in m.items()},
                  'queries': len(qrels), 'train_queries': g.get('train_queries'),
                  'pseudo_queries': g.get('pseudo_queries'),
                  **{k: g[k] for k in QUERY_FIELDS if g.get(k)},
                  'training': g.get('training'), 'train_s': g.get('train_s'),
                  'ms_per_query': round(base.get('ms_per_query', 0) + g['ms_per_query'], 2),
                  'params_m': g.get('params_m'), 'tokens': g.get('tokens'),
                  'init': g.get('init'), 'identifiers': g.get('identifiers'),
                  **({'generative_command': g['command']} if g.get('command') else {}),
                  **({'alpha': alpha, 'dev_queries': len(c.qrels[DEV]), 'alpha_curve': curve}
                     if tag == 'hybrid_alpha' else {})})
  if not out:
    raise ValueError('The hybrid rows need a generative method in the same table (methods '
                     f'from {docgen.METHODS}) with {split} and {DEV} run files.')
  return out


@dataclasses.dataclass(frozen=True)
class _Table:
  """What the rows of one invocation share: the run folder, the collection
  and its `split` (with `dev` held out), its tokenizations and FM-index."""
  workdir: str
  c: corpus.Collection
  split: str
  dev: tuple[str, ...]
  sp: spm.SentencePieceProcessor
  tc: corpus.TokenizedCollection
  fm: fm_index.FMIndex
  queries_file: str | None

  def tested(self, row: dict) -> dict:
    """`row` with its paired tests against BM25 (`with_p_vs_bm25`) and
    provenance; on process 0, which writes the run files and tables."""
    row = {**row, **tables.provenance()}
    if jax.process_index() > 0:
      return row
    return with_p_vs_bm25(self.workdir, row, self.c.qrels[self.split], self.split)


def _measured(row_fn):
  """A row function made a METHODS entry: its row with the process's peak
  memory so far (this method and those before it), tested."""
  def rows_fn(t: _Table, method: str, rows: list[dict]) -> dict:
    del rows  # a row of its own
    row = row_fn(t, method)
    return t.tested({**row, 'peak_rss_gib': round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})
  return rows_fn


def _bm25(t: _Table, method: str) -> dict:
  return corpus.bm25_row(t.c, t.sp, t.split, os.path.join(t.workdir, method), t.dev)


def _bm25_words(t: _Table, method: str) -> dict:
  words = corpus.WordTokenizer([corpus.document_text(a, x) for a, x in zip(t.c.titles, t.c.texts)])
  return corpus.bm25_row(t.c, words, t.split, os.path.join(t.workdir, method))


def _generative(t: _Table, method: str) -> dict:
  return docgen.train_and_evaluate(docgen.make_method(method), t.tc,
                                   os.path.join(t.workdir, method), eval_split=t.split, fm=t.fm,
                                   cache_dir=os.path.join(t.workdir, 'cache'),
                                   queries_file=t.queries_file, run_splits=t.dev)


def _hybrids(t: _Table, method: str, rows: list[dict]) -> list[dict]:
  del method
  return [t.tested(r) for r in hybrid_rows(t.workdir, t.c, t.split, rows)]


# Each name of METHODS -> (table, name, rows so far) -> its row (saved as
# <method>/row.json), or the hybrids' rows (saved together as hybrid/row.json).
ROWS = {'bm25': _measured(_bm25), 'bm25_words': _measured(_bm25_words),
        **{m: _measured(_generative) for m in docgen.METHODS}, 'hybrid': _hybrids}
assert tuple(ROWS) == METHODS


def run(workdir: str, collection: str = 'cranfield', data_dir: str | None = None,
        split: str = 'test', vocab_size: int = 8000,
        methods: Sequence[str] = METHODS, queries_file: str | None = None,
        dev_fraction: float = 0.2) -> list[dict]:
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
    dev_fraction: the share of the training queries held out of every
      method's training (the 'dev' split, chosen with seed 0), on which the
      hybrid rows tune; 0 trains on them all (then no hybrid row).
  """
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f'Unknown retrieval methods {sorted(unknown)}; choose from {METHODS}.')
  loop.make_workdir(workdir)
  c = corpus.load_beir(collection, data_dir)
  if dev_fraction:
    c = c.hold_out(dev_fraction, name=DEV)
  dev = (DEV,) if DEV in c.qrels else ()
  model = os.path.join(workdir, f'{collection}_spm{vocab_size}.model')
  if not os.path.exists(model):  # deterministic: parallel invocations may share it
    corpus.train_sentencepiece([corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)],
                               model[:-len('.model')], vocab_size)
  sp = spm.SentencePieceProcessor(model_file=model)
  tc = corpus.TokenizedCollection.build(c, sp)
  fm = fm_index.FMIndex.build(tc.doc_tokens, sp.get_piece_size())
  table = _Table(workdir, c, split, dev, sp, tc, fm, queries_file)
  rows, title = [], f'{collection}, {split} queries'
  for i, method in enumerate(methods):
    logging.info('[%d/%d] %s', i + 1, len(methods), method)
    saved = ROWS[method](table, method, rows)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(row_path(workdir, method)), exist_ok=True)
      with open(row_path(workdir, method), 'w') as f:
        json.dump(saved, f, indent=1)
    rows += saved if isinstance(saved, list) else [saved]
    md = write_table(rows, workdir, title)  # the table so far, after every method
  if jax.process_index() == 0:
    print(md, flush=True)
    with open(os.path.join(workdir, 'config.gin'), 'w') as f:
      f.write(gin.operative_config_str())
  return rows
