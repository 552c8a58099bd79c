import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from genrec import ids
from genrec.data import sequences
from genrec.benchmarks import ablation, id_quality, scaling, tiger_table, time_to_quality


def test_code_usage_counts_and_perplexity():
  used, ppl = id_quality.code_usage(np.array([0, 0, 1, 1]), 4)
  assert used == 2 and abs(ppl - 2.0) < 1e-9


def test_quality_row_reports_collisions_before_and_after():
  data = sequences.make_synthetic(num_users=50, num_items=60, seed=0)
  item_ids = ids.HierarchicalKMeansIds(num_levels=1, branching=4).fit(data)
  row = id_quality.quality_row('synthetic', 'hkmeans', item_ids, 0.5)
  assert row['collisions_before'] == 60 - len(np.unique(item_ids.codes[1:, :1]))
  assert row['collisions_after'] == 0 and row['levels'] == 2
  schemes = id_quality.make_schemes(['atomic', 'lcrec'], None, 'synthetic', 10)
  assert list(schemes) == ['atomic']  # no LC-Rec file for the synthetic set


def _fake_run(root, name, ndcg):
  m = {'recall@5': 0.1, 'ndcg@5': 0.05, 'recall@10': 0.2, 'ndcg@10': ndcg, 'invalid_rate': 0.0}
  run = root / name
  run.mkdir()
  (run / 'results.json').write_text(json.dumps({
      'id_scheme': name, 'params': 10, 'num_train_steps': 100, 'batch_size': 8,
      'best_step': 100, 'train_time_s_this_invocation': 1.0, 'device': '1 x cpu',
      'identifier_collisions': 0, 'validation': m, 'test': m, 'popularity_test': m}))
  (run / 'eval_history.jsonl').write_text(
      json.dumps({'step': 50, 'validation/ndcg@10': ndcg / 2}) + '\n'
      + json.dumps({'step': 100, 'validation/ndcg@10': ndcg}) + '\n')


def test_ablation_table_from_run_directories(tmp_path):
  _fake_run(tmp_path, 'atomic', 0.125)
  _fake_run(tmp_path, 'rqvae', 0.25)
  (tmp_path / 'unfinished').mkdir()  # no results.json: left out
  md = ablation.write_table(str(tmp_path), 'Beauty')
  assert md.startswith('## Beauty')
  assert '| atomic | encoder_decoder | atomic | test | 0.1000 | 0.0500 | 0.2000 | 0.1250 |' in md
  assert '- rqvae: 50:0.1250 100:0.2500' in md
  assert 'unfinished' not in md
  rows = (tmp_path / 'ablation.csv').read_text().splitlines()
  assert len(rows) == 1 + 4  # header + 2 runs x 2 splits


def test_tiger_table_puts_our_runs_beside_the_published_rows(tmp_path):
  _fake_run(tmp_path, 'tiger_beauty', 0.03)
  results = json.loads((tmp_path / 'tiger_beauty' / 'results.json').read_text())
  results.update(dataset='beauty', id_content='text', host='2 cores, Some CPU',
                 evaluated_at='2026-12-02T10:00:00Z', epochs=5.8, commit='0123abcd4567',
                 command="python main.py --gin_file=gin/recommendation/tiger_beauty.gin",
                 test_slices={s: {'ndcg@10': v} for s, v in
                              (('head', 0.05), ('torso', 0.02), ('tail', 0.01), ('unseen', 0.0))})
  (tmp_path / 'tiger_beauty' / 'results.json').write_text(json.dumps(results))
  md = tiger_table.markdown(tiger_table.collect([str(tmp_path)]))
  beauty = md.split('### beauty')[1].split('###')[0]
  assert ('| tiger_beauty | genrec encoder_decoder | tiger_beauty | text | 0.1 | 0.05 | 0.2 | '
          '0.03 | 0.0 | 0.05 | 0.02 | 0.01 | 0.0 |') in beauty  # invalid rate, the four slices
  assert ('| 100 x 8 (5.8 epochs) | 100 | 1.0 | 1 x cpu (2 cores, Some CPU) | 2026-12-02 | '
          '0123abcd4567 | python main.py --gin_file=gin/recommendation/tiger_beauty.gin |') in beauty
  assert '| - | TIGER (paper) |  |  | 0.0454 | 0.0321 | 0.0648 | 0.0384 |' in beauty
  assert 'SASRec (TIGER paper)' in beauty and '### toys' in md


def test_tiger_table_gives_the_mean_and_deviation_of_seed_runs(tmp_path):
  """Runs named <name>_s<seed> also give one row of their mean and sample
  standard deviation per metric; a lone seed gives none."""
  for seed, ndcg in ((0, 0.03), (1, 0.04), (2, 0.05)):
    _fake_run(tmp_path, f'item_sid_60m_s{seed}', ndcg)
  _fake_run(tmp_path, 'other_s0', 0.01)
  for run in tmp_path.iterdir():
    results = json.loads((run / 'results.json').read_text())
    results.update(dataset='beauty', train_seconds=100.0 + len(run.name))
    (run / 'results.json').write_text(json.dumps(results))
  rows = tiger_table.collect([str(tmp_path)])
  mean, = [r for r in rows if r['run'].endswith('seeds)')]
  assert mean['run'] == 'item_sid_60m (3 seeds)' and mean['seeds'] == '0 1 2'
  assert mean['ndcg@10'] == 0.04 and mean['ndcg@10_std'] == 0.01
  assert mean['recall@10'] == 0.2 and mean['recall@10_std'] == 0.0
  assert 'item_sid_60m (3 seeds)' in tiger_table.markdown(rows)


def test_tiger_table_keeps_the_rows_of_record_and_renews_rerun_ones(tmp_path):
  """--table_keep: the committed CSV's rows stay (their run folders are gone),
  a run folder of the same run and command replaces its kept row, and the
  published rows are not doubled."""
  runs = tmp_path / 'runs'
  runs.mkdir()
  _fake_run(runs, 'sports_sasrec', 0.02)
  _fake_run(runs, 'toys_sasrec', 0.03)
  for name, dataset in (('sports_sasrec', 'sports'), ('toys_sasrec', 'toys')):
    path = runs / name / 'results.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), 'dataset': dataset}))
  cmd = [sys.executable, '-m', 'genrec.benchmarks.tiger_table', f'--runs={runs}',
         f'--table_dir={tmp_path / "docs"}', '--table_stem=tiger_toy']
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = (tmp_path / 'docs' / 'tiger_toy.csv').read_text()
  (runs / 'toys_sasrec' / 'results.json').unlink()  # its folder is gone next time
  _fake_run(runs, 'sports_rqkmeans', 0.01)
  path = runs / 'sports_rqkmeans' / 'results.json'
  path.write_text(json.dumps({**json.loads(path.read_text()), 'dataset': 'sports'}))
  proc = subprocess.run(cmd + [f'--table_keep={tmp_path / "docs" / "tiger_toy.csv"}'],
                        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  md = (tmp_path / 'docs' / 'tiger_toy.md').read_text()
  toys, sports = md.split('### toys')[1], md.split('### sports')[1].split('###')[0]
  rows = lambda text, run: [line for line in text.splitlines() if line.startswith(f'| {run} |')]
  assert len(rows(toys, 'toys_sasrec')) == 1 and toys.count('TIGER (paper)') == 1
  assert len(rows(sports, 'sports_sasrec')) == 1 and rows(sports, 'sports_rqkmeans')
  assert md.count('| run | model | id_scheme |') == 3  # the same columns in every table
  assert len((tmp_path / 'docs' / 'tiger_toy.csv').read_text().splitlines()) == len(
      first.splitlines()) + 1
  bad = tmp_path / 'other.csv'
  bad.write_text('method,ndcg@10\nbm25,0.3\n')
  proc = subprocess.run(cmd + [f'--table_keep={bad}'], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=300)
  assert proc.returncode != 0 and "have no 'dataset'" in proc.stderr


def test_time_to_quality_curves_table_and_plot(tmp_path):
  _fake_run(tmp_path, 'old', 0.1)  # evaluations without seconds: left out
  _fake_run(tmp_path, 'sasrec', 0.05)
  run = tmp_path / 'sasrec'
  points = [(100, 1.0, 600.0, 0.02), (200, 2.0, 1200.0, 0.04), (300, 3.0, 4000.0, 0.03),
            (200, 2.0, 1300.0, 0.045)]  # a restart evaluated step 200 again: the last wins
  run.joinpath('eval_history.jsonl').write_text(''.join(
      json.dumps({'step': s, 'epoch': e, 'train_seconds': t, 'validation/ndcg@10': v}) + '\n'
      for s, e, t, v in points))
  md = time_to_quality.write(str(tmp_path), [900, 3600])
  row = '| sasrec | encoder_decoder | sasrec | 0.02 | 0.045 | 0.045 | 1300 | 2.0 | 4000 | 3.0 |'
  assert row in md, md
  assert 'old' not in md.split('Seconds are')[0]
  csv_rows = (tmp_path / 'time_to_quality.csv').read_text().splitlines()
  assert csv_rows[0] == 'run,step,epoch,train_seconds,val_ndcg@10' and len(csv_rows) == 4
  assert (tmp_path / 'time_to_quality.png').stat().st_size > 1000
  # An earlier table's curve of a run whose folder is gone joins the plot and
  # the table; a run still here keeps its own points.
  old = tmp_path / 'old.csv'
  old.write_text('run,step,epoch,train_seconds,val_ndcg@10\npacked,40,0.1,500.0,0.01\n'
                 'packed,80,0.2,1000.0,0.02\nsasrec,100,1.0,600.0,0.5\n')
  md = time_to_quality.write(str(tmp_path), [900, 3600], [str(old)])
  assert '| packed |  |  | 0.01 | 0.02 | 0.02 | 1000 | 0.2 | 1000 | 0.2 | (kept curve) |' in md, md
  assert row in md
  assert len((tmp_path / 'time_to_quality.csv').read_text().splitlines()) == 6
  md = time_to_quality.write(str(tmp_path), [900], [f'{old}:other'])
  assert 'packed' not in md


def test_scaling_memory_table():
  memory = {(r['model'].split()[0].strip(','), r['strategy'], r['devices']): r
            for r in scaling.memory_rows((1, 8), table_rows=1_000_000)}
  assert memory['ranker', 'data', 8]['of_total'] == 1.0  # replicated
  assert memory['ranker', 'tensor', 8]['of_total'] == 0.125  # rows split 8 ways
  assert memory['ranker', 'tensor', 1]['of_total'] == 1.0
  assert memory['base', 'fsdp', 8]['of_total'] == 0.125
  assert memory['base', 'data', 1]['per_device_GiB'] == pytest.approx(
      memory['base', 'data', 1]['params_M'] * 1e6 * 12 / 2**30, rel=1e-3)  # fp32 + 2 moments
  assert 'split 8 ways' in memory['base', 'tensor', 8]['note']  # 12 heads


def test_retrieval_table_of_record_from_several_run_folders(tmp_path):
  """`--table_only` gathers saved rows (the hybrid folder holds a list) from
  several run folders into one table under --table_dir, BM25 once where the
  folders measured the same."""
  for folder, ndcg in (('plain', 0.3), ('pseudo', 0.4)):
    for method, row in (('bm25', {'method': 'BM25 (k1 0.9, b 0.4)', 'ndcg@10': 0.33}),
                        ('dsi_atomic', {'method': 'dsi_atomic', 'ndcg@10': ndcg}),
                        ('hybrid', [{'method': 'hybrid: BM25 + dsi_atomic, RRF (k 60)',
                                     'ndcg@10': ndcg + 0.05}])):
      (tmp_path / folder / method).mkdir(parents=True)
      (tmp_path / folder / method / 'row.json').write_text(json.dumps(row))
  proc = subprocess.run(
      [sys.executable, '-m', 'genrec.benchmarks.retrieval', '--table_only',
       f'--table_from={tmp_path / "plain"},{tmp_path / "pseudo"}',
       '--methods=bm25,dsi_atomic,hybrid', f'--table_dir={tmp_path / "docs"}',
       '--table_stem=retrieval_toy'], capture_output=True, text=True, cwd=REPO_ROOT,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  md = (tmp_path / 'docs' / 'retrieval_toy.md').read_text()
  summary, full = md.split('### Every figure, with its command')
  for part in (summary, full):
    assert part.count('| dsi_atomic |') == 2 and part.count('| hybrid: BM25 + dsi_atomic') == 2
    assert part.count('| BM25 (k1 0.9, b 0.4) |') == 1  # the same BM25 figures once
  assert [line.split(' | ')[4] for line in full.splitlines() if '| dsi_atomic |' in line] == [
      '0.3', '0.4']
  assert [line.split(' | ')[6] for line in summary.splitlines() if '| dsi_atomic |' in line] == [
      '0.3', '0.4']
  # A later table keeps these rows from the CSV (their folders gone) and adds new ones.
  csv_text = (tmp_path / 'docs' / 'retrieval_toy.csv').read_text()
  (tmp_path / 'later' / 'dsi_naive').mkdir(parents=True)
  (tmp_path / 'later' / 'dsi_naive' / 'row.json').write_text(
      json.dumps({'method': 'dsi_naive', 'ndcg@10': 0.2}))
  proc = subprocess.run(
      [sys.executable, '-m', 'genrec.benchmarks.retrieval', '--table_only',
       f'--table_from={tmp_path / "later"}', '--methods=dsi_naive',
       f'--table_keep={tmp_path / "docs" / "retrieval_toy.csv"}',
       f'--table_dir={tmp_path / "docs"}', '--table_stem=retrieval_toy'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  later = (tmp_path / 'docs' / 'retrieval_toy.md').read_text()
  summary_table = summary.split('\n\n### nDCG@10')[0]  # then the grid, which gains a row
  assert later.startswith(summary_table) and later.count('| dsi_naive | ') == 2
  assert '| DSI naive | 0.2000 |' in later and '| DSI atomic | 0.3000<br>0.4000* |' in later
  assert full.rstrip('\n') in later
  assert (tmp_path / 'docs' / 'retrieval_toy.csv').read_text().startswith(
      csv_text.split('\n')[0].rstrip('\r'))
  # Kept rows whose folder is read again are replaced in place, not repeated.
  proc = subprocess.run(
      [sys.executable, '-m', 'genrec.benchmarks.retrieval', '--table_only',
       f'--table_from={tmp_path / "plain"},{tmp_path / "later"}',
       '--methods=bm25,dsi_atomic,dsi_naive,hybrid',
       f'--table_keep={tmp_path / "docs" / "retrieval_toy.csv"}',
       f'--table_dir={tmp_path / "docs"}', '--table_stem=retrieval_toy'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'docs' / 'retrieval_toy.md').read_text() == later


def test_retrieval_summary_says_what_each_row_is():
  """The summary's init, identifiers and pseudo-query cells: rows from before
  those columns (default architecture, random init; the DSI scheme from the
  method and the command's bindings), pseudo-queries from a generation or
  from a file (also named only by an older row's command), and a hybrid row
  from before it repeated its generative row's pseudo-query fields."""
  from genrec.retrieval import run as retrieval_run
  old = {'method': 'hybrid: BM25 + seal, RRF (k 60)', 'training': '10 x 8', 'ndcg@10': 0.1,
         'pseudo_queries': 10, 'command': "main.py --gin_bindings=a.queries_file='c/queries.jsonl'"}
  sampled = {'method': 'dsi_semantic', 'training': '10 x 8', 'init': 'MiniLM',
             'identifiers': 'docid + title prefix (8 tokens)', 'pseudo_queries': 5.7,
             'query_decoding': 'sample (top-10, t 1)', 'pseudo_distinct': 0.9512,
             'command': "main.py \"--gin_bindings=docgen.DsiTasks.semantic_scheme = 'residual'\" "
                        '--gin_bindings=docgen.DsiTasks.semantic_branching=128'}
  hybrid = {'method': 'hybrid: BM25 + dsi_semantic, alpha 0.3 tuned on dev', 'training': '10 x 8',
            'identifiers': 'docid + title prefix (8 tokens)', 'pseudo_queries': 5.7,
            'command': sampled['command']}
  from_file = {'method': 'dsi_atomic', 'training': '10 x 8', 'pseudo_queries': 3.0,
               'query_source': 'queries-sample-k10-t1.jsonl'}
  naive = {'method': 'dsi_naive', 'training': '10 x 8', 'identifiers': 'docid'}
  now = {'method': 'dsi_semantic', 'training': '10 x 8', 'identifiers': 'semantic docid, x'}
  bm25 = {'method': 'BM25 (k1 0.9, b 0.4)', 'training': 'none', 'ndcg@10': 0.3}
  rows = retrieval_run.summary_rows([old, sampled, hybrid, from_file, naive, now, bm25])
  residual = 'semantic docid, residual k-means 3 x 128 + title prefix (8 tokens)'
  assert [(r['init'], r['identifiers'], r['pseudo-queries']) for r in rows] == [
      ('random', 'n-grams', '10/doc, queries.jsonl'),
      ('MiniLM', residual, '5.7/doc, sample (top-10, t 1), 95% distinct'),
      ('random', residual, '5.7/doc, sample (top-10, t 1), 95% distinct'),
      ('random', 'atomic docid', '3.0/doc, queries-sample-k10-t1.jsonl'),
      ('random', 'naive docid (digits)', ''),
      ('random', 'semantic docid, x', ''),
      ('', '', '')]
  assert rows[0]['ndcg@10'] == 0.1 and list(rows[0]) == list(retrieval_run.SUMMARY_COLUMNS)


def test_retrieval_grid_places_each_run_by_init_and_pseudo_queries(tmp_path):
  """The grid: a generative row goes in its method's row, in the column of its
  init (random or pretrained) and pseudo-queries, with its budget, non-plain
  identifiers, queries per document and the alpha hybrid of the same run
  (not another run's, also when a later invocation fused that run again);
  '*' marks nDCG@10 above BM25; '-' a cell not run."""
  from genrec.retrieval import run as retrieval_run
  cmd_a, cmd_b = 'main.py --workdir=a', 'main.py --workdir=b'
  rows = [
      {'method': 'BM25 (k1 0.9, b 0.4)', 'training': 'none', 'ndcg@10': 0.5, 'command': cmd_a},
      {'method': 'dsi_atomic', 'training': '8000 x 64 (9 examples), 1 x cpu', 'ndcg@10': 0.4,
       'command': cmd_a},
      {'method': 'hybrid: BM25 + dsi_atomic, RRF (k 60)', 'ndcg@10': 0.55, 'command': cmd_a},
      {'method': 'hybrid: BM25 + dsi_atomic, alpha 0.5 tuned on dev', 'ndcg@10': 0.6,
       'command': cmd_a},
      {'method': 'dsi_atomic', 'training': '600 x 32 (9 examples), 1 x cpu', 'ndcg@10': 0.7,
       'init': 'MiniLM', 'pseudo_queries': 10.0, 'command': cmd_b},
      {'method': 'dsi_semantic', 'training': '600 x 32', 'ndcg@10': 0.3, 'init': 'MiniLM',
       'params_m': 25.81,
       'identifiers': 'semantic docid, residual k-means 2 x 128', 'command': cmd_b},
      {'method': 'hybrid: BM25 + dsi_atomic, alpha 0.2 tuned on dev', 'ndcg@10': 0.8,
       'command': cmd_b},
      # Run a's semantic row (none here) fused again by a later invocation: not run b's.
      {'method': 'hybrid: BM25 + dsi_semantic, alpha 0.9 tuned on dev', 'ndcg@10': 0.1,
       'command': cmd_b, 'generative_command': cmd_a},
  ]
  grid, bm25 = retrieval_run.grid_rows(rows)
  assert bm25 == 0.5
  assert grid == [
      {'method': 'DSI atomic', 'random init': '0.4000 (8000 x 64); hybrid (alpha 0.5) 0.6000*',
       'random init + pseudo-queries': '-', 'pretrained init': '-',
       'pretrained init + pseudo-queries':
           '0.7000* (600 x 32, 10/doc); hybrid (alpha 0.2) 0.8000*'},
      {'method': 'DSI semantic', 'random init': '-', 'random init + pseudo-queries': '-',
       'pretrained init': '0.3000 (600 x 32, 25.8M, residual k-means 2 x 128)',
       'pretrained init + pseudo-queries': '-'}]
  md = retrieval_run.write_table(rows, str(tmp_path), 'toy')
  assert '\\* above BM25 (0.5000); \u2020 different from BM25 at p < 0.05' in md
  assert '| DSI semantic | - | - | 0.3000 (600' in md
  # Regenerating a table: a hybrid row fused again later replaces the kept one of its run.
  code = f"""
from genrec.benchmarks import retrieval
kept = {rows[1:4]!r}
again = {{**kept[2], 'ndcg@10': 0.61, 'command': 'later', 'generative_command': {cmd_a!r}}}
other = {{**kept[2], 'command': 'later'}}  # no generative_command: a run of its own
assert retrieval._replace_kept(kept, [again, other]) == [kept[0], kept[1], again, other]
# The same run again, whose dev queries tuned another alpha: replaces the row, not beside it.
retuned = {{**kept[2], 'method': 'hybrid: BM25 + dsi_atomic, alpha 0.15 tuned on dev'}}
assert retrieval._replace_kept(kept, [retuned]) == [kept[0], kept[1], retuned]
"""
  proc = subprocess.run([sys.executable, '-c', code + "print('ok')"], capture_output=True,
                        text=True, cwd=REPO_ROOT)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_packed_throughput_and_epoch_cost_count_every_example():
  """train_throughput's packed rows and epoch_cost's packed encoder-decoder
  account for each prefix once (the examples/s and items/s they report). In
  child processes: the two modules define absl flags of the same names."""
  epoch = """
from genrec.data import sequences
from genrec.benchmarks import epoch_cost
data = sequences.make_synthetic(num_users=60, num_items=40, seed=1)
model, arrays, targets = epoch_cost.model_setup('encoder_decoder_packed', data, 5, 2)
prefixes = sum(max(0, len(s) - 3) for s in data.sequences)  # leave-one-out train part
assert targets.sum() == prefixes and len(targets) < prefixes, (targets.sum(), prefixes)
# The item-level model trains on SASRec's windows: the same targets, L codes each.
_, sasrec_arrays, sasrec_targets = epoch_cost.model_setup('sasrec', data, 5, 2)
for name, levels in (('item_sid', 8), ('item_sid_ar', 2)):
  model, arrays, item_targets = epoch_cost.model_setup(name, data, 5, 2, long_levels=8)
  assert arrays['next_codes'].shape[-1] == levels and len(model.config.level_sizes) == levels
  assert item_targets.sum() == sasrec_targets.sum() and len(item_targets) == len(sasrec_targets)
"""
  throughput = """
import jax, numpy as np
from genrec import models, partitioning
from genrec.benchmarks import train_throughput
tiny = models.TransformerConfig(vocab_size=64, d_model=16, num_heads=2, head_dim=8, d_ff=32,
                                num_encoder_layers=1, num_decoder_layers=1)
lengths = np.random.default_rng(0).integers(1, 10, 400)
row = train_throughput.run_packed(tiny, 32, 2, 1, lengths, 9, 3,
                                  partitioning.make_mesh(devices=jax.devices()[:1]))
assert row['packed_examples_per_row'] > 1 and row['packed_rows_per_batch'] < 32, row
assert row['packed_examples_per_s'] > 0, row
"""
  for code in (epoch, throughput):
    proc = subprocess.run([sys.executable, '-c', code + "print('ok')"], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_retrieval_rows_carry_p_vs_bm25_from_their_run_files(tmp_path):
  """A generative or hybrid row gets its paired test against BM25 from the run
  files of its folder; BM25's row, a row whose files are missing and a row
  that has one already are left as they are; the grid marks p < 0.05."""
  from genrec.retrieval import corpus
  from genrec.retrieval import run as retrieval_run
  qrels = {f'q{i}': {f'd{i}'} for i in range(40)}
  runs = {'bm25/test.trec': {q: ['x', f'd{q[1:]}'] for q in qrels},  # found second
          'dsi_atomic/test.trec': {q: [f'd{q[1:]}'] for q in qrels},  # found first
          'hybrid/dsi_atomic/hybrid_rrf_test.trec': {q: ['x', f'd{q[1:]}'] for q in qrels}}
  for name, ranked in runs.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    corpus.write_trec_run(str(tmp_path / name), ranked,
                          {q: [1.0 - 0.1 * i for i in range(len(d))] for q, d in ranked.items()},
                          'x')
  bm25 = {'method': 'BM25 (k1 0.9, b 0.4)', 'ndcg@10': 0.63, 'training': 'none'}
  gen = {'method': 'dsi_atomic', 'ndcg@10': 1.0, 'training': '10 x 8'}
  rrf = {'method': 'hybrid: BM25 + dsi_atomic, RRF (k 60)', 'ndcg@10': 0.63}
  alpha = {'method': 'hybrid: BM25 + dsi_atomic, alpha 0.5 tuned on dev', 'ndcg@10': 0.7}
  done = {**gen, 'p_vs_bm25': 0.5}
  out = [retrieval_run.with_p_vs_bm25(str(tmp_path), r, qrels, 'test')
         for r in (bm25, gen, rrf, alpha, done)]
  assert out[0] == bm25 and out[3] == alpha
  assert out[4]['p_vs_bm25'] == 0.5 and out[4]['p_r@1_vs_bm25'] == out[1]['p_r@1_vs_bm25']
  assert out[1]['p_vs_bm25'] == pytest.approx(1 / 10_001, abs=1e-4)
  assert out[1]['p_r@1_vs_bm25'] == out[1]['p_mrr@10_vs_bm25'] == out[1]['p_vs_bm25']
  assert out[2]['p_vs_bm25'] == 1.0  # the same ranking as BM25's
  grid, _ = retrieval_run.grid_rows([bm25, out[1], {**alpha, 'p_vs_bm25': 0.2}])
  assert grid[0]['random init'] == '1.0000*\u2020 (10 x 8); hybrid (alpha 0.5) 0.7000*'


def test_retrieval_compare_two_run_folders(tmp_path):
  """`--compare=BASE,OTHER`: each method (and dev-tuned hybrid) with a run file
  in both folders, its nDCG@10 in each and the paired test's p-value."""
  from genrec.retrieval import corpus
  from genrec.retrieval import run as retrieval_run
  qrels = {f'q{i}': {f'd{i}'} for i in range(40)}
  first, second = {q: ['x', f'd{q[1:]}'] for q in qrels}, {q: [f'd{q[1:]}'] for q in qrels}
  for folder, name, ranked in (('a', 'dsi_atomic/test.trec', second),
                               ('b', 'dsi_atomic/test.trec', first),
                               ('a', 'hybrid/dsi_atomic/hybrid_alpha_test.trec', first),
                               ('b', 'hybrid/dsi_atomic/hybrid_alpha_test.trec', first),
                               ('b', 'seal/test.trec', first)):  # not in both: no row
    (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
    corpus.write_trec_run(str(tmp_path / folder / name), ranked,
                          {q: [1.0 - 0.1 * i for i in range(len(d))] for q, d in ranked.items()},
                          'x')
  rows = retrieval_run.compare_runs(str(tmp_path / 'a'), str(tmp_path / 'b'), qrels)
  assert rows == [
      {'method': 'dsi_atomic', 'ndcg@10 base': 1.0, 'ndcg@10 other': 0.6309,
       'p': pytest.approx(1 / 10_001, abs=1e-4)},
      {'method': 'hybrid: BM25 + dsi_atomic, alpha tuned on dev', 'ndcg@10 base': 0.6309,
       'ndcg@10 other': 0.6309, 'p': 1.0}]
  proc = subprocess.run(
      [sys.executable, '-m', 'genrec.benchmarks.retrieval', f'--compare={tmp_path / "a"}'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert proc.returncode != 0 and 'two run folders BASE,OTHER' in proc.stderr


def test_incremental_indexing_table_splits_queries_by_old_and_added(tmp_path):
  """The add-documents / add-items benchmark's table from run folders: each
  way of indexing on the queries about added documents (items), about old
  ones, and all."""
  from genrec.benchmarks import incremental_indexing as inc
  from genrec.retrieval import corpus
  data = tmp_path / 'data' / 'col'
  (data / 'qrels').mkdir(parents=True)
  docs = [{'_id': f'd{i}', 'title': f'art{i // 2}', 'text': f'text {i}'} for i in range(6)]
  (data / 'corpus.jsonl').write_text(''.join(json.dumps(d) + '\n' for d in docs))
  (data / 'queries.jsonl').write_text(''.join(
      json.dumps({'_id': f'q{i}', 'text': f'q {i}'}) + '\n' for i in range(6)))
  (data / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\n' + ''.join(
      f'q{i}\td{i}\t1\n' for i in range(6)))
  info = inc.prepare('col', str(tmp_path / 'exp'), fraction=0.34, data_dir=str(tmp_path / 'data'))
  assert info['articles_held_out'] == 1 and info['documents_added'] == 2
  added = {json.loads(line)['_id'] for line in open(tmp_path / 'exp' / inc.ADDED)}
  old = [d['_id'] for d in docs if d['_id'] not in added]
  assert (tmp_path / 'exp' / 'data' / 'col_old' / 'corpus.jsonl').read_text().count('"_id"') == 4

  def folder(path, ranked, row):
    path.mkdir(parents=True)
    corpus.write_trec_run(str(path / 'test.trec'), ranked,
                          {q: [1.0] * len(d) for q, d in ranked.items()}, 'x')
    (path / 'row.json').write_text(json.dumps(row))
  everything = {f'q{i}': [f'd{i}'] for i in range(6)}
  folder(tmp_path / 'exp' / 'old' / 'dsi_atomic',
         {f'q{i}': [old[0]] for i in range(6)}, {'command': 'old'})
  folder(tmp_path / 'exp' / 'added', everything,
         {'total_s': 3.0, 'atomic_rows': 'mapped', 'replay_steps': 0, 'commit': 'abc'})
  folder(tmp_path / 'full' / 'dsi_atomic', everything, {'train_s': 9.0, 'training': '5 x 2 (..)'})
  rows = inc.squad_rows(str(tmp_path / 'exp'), str(tmp_path / 'full' / 'dsi_atomic'),
                        str(tmp_path / 'data'))
  by = {(r['indexing'].split(':')[0].split(',')[0], r['questions about']): r for r in rows}
  assert by[('DSI atomic + added documents', 'added documents')]['recall@1'] == 1.0
  assert by[('DSI atomic trained without the added documents', 'added documents')][
      'recall@1'] == 0.0
  assert by[('DSI atomic trained without the added documents', 'all')]['queries'] == 6
  retrained = 'DSI atomic retrained on all documents (and their training questions)'
  assert by[(retrained, 'old documents')]['seconds'] == 9.0
  assert by[('DSI atomic + added documents', 'all')]['commit'] == 'abc'


def test_rows_recorded_before_tables_named_a_commit_get_the_commit_that_wrote_them(
    tmp_path, monkeypatch):
  """recorded_commit fills the commit of rows that lack one from git blame (before
  'command'), keeps the commits rows already name, and rewrites nothing else."""
  import csv
  from genrec.benchmarks import recorded_commit
  git = lambda *a: subprocess.run(['git', '-C', str(tmp_path), *a], check=True,
                                  capture_output=True, text=True).stdout.strip()
  git('init', '-q')
  git('config', 'user.email', 't@example.com')
  git('config', 'user.name', 't')
  path = tmp_path / 't.csv'
  path.write_text('size,ms,command\r\n1,2.5,"python -m x --a=1,2"\r\n')
  git('add', 't.csv')
  git('commit', '-qm', 'first row')
  first = git('rev-parse', 'HEAD')[:12]
  with open(path, 'a', newline='') as f:
    f.write('3,4.0,python -m x\r\n')
  git('commit', '-qam', 'second row')
  second = git('rev-parse', 'HEAD')[:12]
  monkeypatch.chdir(tmp_path)
  assert recorded_commit.add_commits('t.csv') == 2
  with open(path, newline='') as f:
    assert list(csv.reader(f)) == [['size', 'ms', 'commit', 'command'],
                                   ['1', '2.5', first, 'python -m x --a=1,2'],
                                   ['3', '4.0', second, 'python -m x']]
  git('commit', '-qam', 'commits named')
  assert recorded_commit.add_commits('t.csv') == 0  # every row names one already
