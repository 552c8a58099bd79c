r"""Our test metrics beside the published TIGER and SASRec rows.

  python -m genrec.benchmarks.tiger_table --runs=runs/tiger [--runs=runs/ablation] \
    [--table_dir=docs/results --table_stem=tiger_table_cpu --table_keep=docs/results/tiger_table_cpu.csv]

Reads every run directory (with results.json) under each --runs and writes
one table per data set to <table_dir>/<table_stem>.md and .csv (default: the first
--runs, `tiger_table`): our rows with what their identifiers were built from,
the popularity slices, their budget (steps x batch, epochs), best step,
training time, machine, date and command, then the published figures (Rajput
et al., 2023, Table 2, and later papers' Beauty NDCG@10). `--table_keep` keeps
the rows of an earlier CSV (a table of record whose run folders are gone); a
run of the same data set, name and command is taken from its folder instead.

Seeds: run folders named `<name>_s<seed>` (e.g. `item_sid_60m_s0`, `_s1`,
`_s2`: the same command with `train.train.seed` and ID_SCHEME's seed
changed) also give one row `<name> (N seeds)` with the mean of every metric
and its standard deviation (`<metric>_std`, sample standard deviation), as
ActionPiece and RPG report.
"""

import re
import statistics

import json
import os

from absl import app, flags, logging

from genrec import tables

flags.DEFINE_multi_string('runs', ['runs/tiger'], 'Folders of run directories.')
flags.DEFINE_string('table_dir', None, 'Where the table goes (default: the first --runs).')
flags.DEFINE_string('table_stem', 'tiger_table', 'The table\'s file name (<stem>.md and .csv).')
flags.DEFINE_string('table_keep', None, 'The CSV of an earlier table whose rows of our runs '
                    'are kept (in their order, before the new ones).')
FLAGS = flags.FLAGS

METRICS = ('recall@5', 'ndcg@5', 'recall@10', 'ndcg@10')
SLICES = ('head', 'torso', 'tail', 'unseen')
# (data set, model) -> R@5, N@5, R@10, N@10 as published: the TIGER paper's
# Table 2, then later papers' Beauty rows (NDCG@10 only; same leave-one-out
# full-ranking protocol).
PUBLISHED = {
    ('beauty', 'TIGER (paper)'): (0.0454, 0.0321, 0.0648, 0.0384),
    ('sports', 'TIGER (paper)'): (0.0264, 0.0181, 0.0400, 0.0225),
    ('toys', 'TIGER (paper)'): (0.0521, 0.0371, 0.0712, 0.0432),
    ('beauty', 'SASRec (TIGER paper)'): (0.0387, 0.0249, 0.0605, 0.0318),
    ('sports', 'SASRec (TIGER paper)'): (0.0233, 0.0154, 0.0350, 0.0192),
    ('toys', 'SASRec (TIGER paper)'): (0.0463, 0.0306, 0.0675, 0.0374),
    ('beauty', 'ActionPiece (Hou et al., 2025)'): (None, None, None, 0.0424),
    ('beauty', 'EAGER-LLM (2025)'): (None, None, None, 0.0459),
    ('beauty', 'eSASRec (2025)'): (None, None, None, 0.053),
}


def run_row(name: str, r: dict, workdir: str) -> dict:
  """One table row of a finished run's results.json."""
  model = r.get('model', 'encoder_decoder')
  if (r.get('packed') or {}).get('examples'):
    model += ', packed prefixes'
  device = r['device']
  return {
      'dataset': r['dataset'], 'run': name, 'model': f'genrec {model}',
      'id_scheme': r['id_scheme'], 'ids_from': r.get('id_content') or '',
      **{k: round(r['test'][k], 4) for k in METRICS},
      'invalid_rate': round(r['test']['invalid_rate'], 4),
      # NDCG@10 of the test users whose target is a head / torso / tail item, or an
      # item never seen as a training target (metrics.popularity_slices).
      **{f'{s} N@10': round(r['test_slices'][s]['ndcg@10'], 4)
         for s in SLICES if s in r.get('test_slices', {})},
      'test_users': r.get('final_eval_users') or r.get('num_users', ''),
      'budget': _budget(r), 'best_step': r['best_step'],
      # Runs from before the cumulative count have this invocation's time only.
      'train_time_s': r.get('train_seconds', r['train_time_s_this_invocation']),
      'machine': f"{device} ({r['host']})" if 'host' in r and 'cpu' in device else device,
      'date': (r.get('evaluated_at') or '')[:10],
      'commit': r.get('commit', ''),
      'command': r.get('command') or _first_command(workdir)}


def _first_command(workdir: str) -> str:
  """The command of the run's first recorded start (run_manifest.jsonl), ''
  if none was recorded (runs from before the field)."""
  path = os.path.join(workdir, 'run_manifest.jsonl')
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    for n, line in enumerate(f, 1):
      try:
        event = json.loads(line)
      except json.JSONDecodeError:
        logging.warning('%s line %d is not JSON; skipped.', path, n)
        continue
      if event.get('event') == 'start' and event.get('command'):
        return event['command']
  return ''


def collect(roots: list[str], keep: list[dict] | None = None) -> list[dict]:
  """Our runs' rows (`keep`'s first, unless a run folder gives the same row
  again), then the published rows."""
  fresh = [run_row(name, r, os.path.join(root, name))
           for root in roots for name, r in tables.finished_runs(root)]
  key = lambda row: (row['dataset'], row['run'], row.get('command', ''))
  renewed = {key(row) for row in fresh}
  rows = [row for row in keep or [] if row.get('budget') != 'paper' and key(row) not in renewed
          and not str(row.get('run', '')).endswith(' seeds)')]
  rows += fresh
  rows += seed_means(rows)
  for (dataset, model), values in PUBLISHED.items():
    rows.append({'dataset': dataset, 'run': '-', 'model': model,
                 **{k: '' if v is None else v for k, v in zip(METRICS, values)},
                 'budget': 'paper'})
  return rows


SEED_SUFFIX = re.compile(r'^(?P<name>.+)_s(?P<seed>\d+)$')
STD_METRICS = (*METRICS, *(f'{s} N@10' for s in SLICES))


def seed_means(rows: list[dict]) -> list[dict]:
  """One row per group of two or more `<name>_s<seed>` runs of a data set:
  metric means (4 decimals) and sample standard deviations (`<metric>_std`),
  the seeds, the mean training time; budget, machine, date and command of
  the first seed's row."""
  groups = {}
  for row in rows:
    m = SEED_SUFFIX.match(str(row.get('run', '')))
    if m and row.get('budget') != 'paper':
      groups.setdefault((row['dataset'], m['name']), []).append((int(m['seed']), row))
  out = []
  for (dataset, name), members in groups.items():
    if len(members) < 2:
      continue
    members.sort(key=lambda x: x[0])
    first = members[0][1]
    agg = {'dataset': dataset, 'run': f'{name} ({len(members)} seeds)',
           **{k: first[k] for k in ('model', 'id_scheme', 'ids_from') if k in first}}
    for k in STD_METRICS:
      values = [float(r[k]) for _, r in members if r.get(k, '') != '']
      if len(values) == len(members):
        agg[k] = round(statistics.mean(values), 4)
        agg[f'{k}_std'] = round(statistics.stdev(values), 4)
    agg['seeds'] = ' '.join(str(seed) for seed, _ in members)
    times = [float(r['train_time_s']) for _, r in members if r.get('train_time_s', '') != '']
    if times:
      agg['train_time_s'] = round(statistics.mean(times), 1)
    agg.update({k: first[k] for k in ('test_users', 'budget', 'machine', 'date', 'commit',
                                      'command')
                if k in first})
    out.append(agg)
  return out


def _budget(r: dict) -> str:
  """Steps x batch, and where the run stopped before its steps (early
  stopping or a time limit), the steps and epochs it ran."""
  text = f"{r['num_train_steps']} x {r['batch_size']}"
  if r.get('stopped_early'):
    text += f" (stopped at {r['last_step']}, {r['epochs']} epochs)"
  elif 'epochs' in r:
    text += f" ({r['epochs']} epochs)"
  return text


COLUMNS = ('run', 'model', 'id_scheme', 'ids_from', *METRICS, 'invalid_rate',
           *(f'{s} N@10' for s in SLICES), 'seeds', *(f'{k}_std' for k in STD_METRICS),
           'test_users', 'budget', 'best_step',
           'train_time_s', 'machine', 'date', 'commit', 'command')


def markdown(rows: list[dict]) -> str:
  # The columns in their order (rows read back from a CSV lack their empty cells).
  present = set(k for r in rows for k in r)
  cols = [c for c in COLUMNS if c in present] + [
      c for c in dict.fromkeys(k for r in rows for k in r) if c not in COLUMNS + ('dataset',)]
  out = []
  for dataset in sorted({r['dataset'] for r in rows}):
    out += [f'### {dataset}', '',
            tables.markdown([r for r in rows if r['dataset'] == dataset], cols), '']
  return '\n'.join(out)


def main(argv):
  del argv
  keep = tables.read_csv(FLAGS.table_keep, 'dataset') if FLAGS.table_keep else None
  rows = collect(FLAGS.runs, keep)
  md = markdown(rows)
  print(md, flush=True)
  tables.write(md, rows, FLAGS.table_dir or FLAGS.runs[0], FLAGS.table_stem)


if __name__ == '__main__':
  app.run(main)
