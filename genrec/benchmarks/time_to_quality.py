r"""Time to quality: validation NDCG@10 against wall-clock seconds and epochs.

  python -m genrec.benchmarks.time_to_quality \
    --gin_file=gin/recommendation/beauty_sasrec.gin \
    --gin_file=gin/recommendation/beauty_rqkmeans_decoder_only.gin \
    --gin_bindings="DATA_DIR='../shared/data'" \
    --gin_bindings="train.train.max_train_seconds=3600" --root=runs/time_to_quality

Trains each gin experiment as `python -m genrec.benchmarks.ablation` does
(same flags; `<root>/<file name>`, a finished run is not trained again; with
--parallel the runs share the machine, so their seconds are not comparable
with solo runs), then reads every
run directory's eval_history.jsonl, whose entries carry the step, the epoch
and the seconds spent in training steps so far (evaluations excluded,
summed over restarts), and writes under --root:

  time_to_quality.csv  one row per evaluation of every run
  time_to_quality.png  validation NDCG@10 vs training seconds and vs epochs
  time_to_quality.md   per run: the best validation NDCG@10 reached by each
                       of --marks seconds, the best overall and when, and the
                       test metrics of the best checkpoint; machine and date

`--table_only` rebuilds the three from the run directories;
`--keep_curves=<an earlier time_to_quality.csv>` adds the curves of runs
whose folders are gone (their rows say so; no test metrics). For comparisons
at equal wall-clock give every run the same `train.train.max_train_seconds`
(it stops at the first evaluation past it); the runs' evaluation period sets
the resolution of the curves.
"""

import os
import time

from absl import app, flags, logging

from genrec import loop, tables
from genrec.benchmarks import ablation

# The ablation's flags (--gin_file, --common_gin_file, --gin_bindings, --root,
# --parallel, --table_only), with this benchmark's own default --root.
FLAGS = flags.FLAGS
FLAGS.set_default('root', 'runs/time_to_quality')
flags.DEFINE_list('marks', ['900', '3600', '10800'], 'Seconds of training at which the '
                  'table reports the best validation NDCG@10 reached so far.')
flags.DEFINE_string('curves_dir', None, 'Where the table and plot go (default: --root).')
flags.DEFINE_string('curves_stem', 'time_to_quality', 'Their file name (<stem>.md/.csv/.png).')
flags.DEFINE_multi_string('keep_curves', [], 'CSV files of earlier time_to_quality tables '
                          'whose runs (absent from --root) are drawn and summarized too; '
                          'PATH:RUN,RUN keeps those runs only.')

KEY = 'validation/ndcg@10'


def curves(root: str) -> dict[str, list[dict]]:
  """Run name -> its evaluations (step, epoch, train_seconds, validation
  NDCG@10), one per step (the last record wins after a restart), in order.
  Runs without timed evaluations (from before the field existed) are left out
  with a warning."""
  out = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name, 'eval_history.jsonl')
    if not os.path.exists(path):
      continue
    points = loop.read_eval_history(path)
    if not all('train_seconds' in p and 'epoch' in p for p in points):
      logging.warning('%s: evaluations without train_seconds/epoch (an older run); left out.',
                      path)
      continue
    out[name] = [{'run': name, 'step': p['step'], 'epoch': p['epoch'],
                  'train_seconds': p['train_seconds'], 'val_ndcg@10': p[KEY]} for p in points]
  return out


def kept_curves(paths: list[str], present: set[str]) -> dict[str, list[dict]]:
  """The curves of earlier tables' runs that are not in `present`."""
  out = {}
  for spec in paths:
    path, _, names = spec.partition(':')
    wanted = set(names.split(',')) if names else None
    for p in tables.read_csv(path, 'run', '--keep_curves'):
      if p['run'] not in present and (wanted is None or p['run'] in wanted):
        out.setdefault(p['run'], []).append(p)
  return out


def best_by(points: list[dict], seconds: float) -> float | None:
  """The best validation NDCG@10 among evaluations within `seconds` of
  training (None if the run had no evaluation by then)."""
  values = [p['val_ndcg@10'] for p in points if p['train_seconds'] <= seconds]
  return max(values) if values else None


def summary(root: str, runs: dict[str, list[dict]], marks: list[float]) -> list[dict]:
  rows = []
  results = dict(tables.finished_runs(root))
  for name, points in runs.items():
    best = max(points, key=lambda p: p['val_ndcg@10'])
    r = results.get(name, {})
    row = {'run': name, 'model': r.get('model', 'encoder_decoder') if r else '',
           'id_scheme': r.get('id_scheme', '')}
    for m in marks:
      value = best_by(points, m)
      row[f'val N@10 by {_fmt_seconds(m)}'] = '' if value is None else round(value, 4)
    row |= {'best val N@10': round(best['val_ndcg@10'], 4),
            'at s': round(best['train_seconds']), 'at epoch': best['epoch'],
            'trained s': round(points[-1]['train_seconds']), 'epochs': points[-1]['epoch']}
    for k in ('recall@10', 'ndcg@10'):
      row[f'test {k}'] = round(r['test'][k], 4) if 'test' in r else '(not finished)'
    if not os.path.isdir(os.path.join(root, name)):  # a kept curve
      row['test recall@10'] = row['test ndcg@10'] = '(kept curve)'
    row['test users'] = (r.get('final_eval_users') or 'all') if 'test' in r else ''
    row['machine'] = r.get('device', '')
    # Of the invocation that wrote the results (runs from before the fields: blank).
    row['date'] = (r.get('evaluated_at') or '')[:10]
    row['commit'] = r.get('commit', '')
    row['command'] = r.get('command', '')
    rows.append(row)
  return rows


def _fmt_seconds(s: float) -> str:
  return f'{s / 3600:g} h' if s >= 3600 else f'{s / 60:g} min'


def plot(runs: dict[str, list[dict]], path: str, title: str) -> bool:
  """Two panels (vs seconds, vs epochs); False when matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    logging.warning('matplotlib is not installed: no plot (pip install matplotlib).')
    return False
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for name, points in runs.items():
    y = [p['val_ndcg@10'] for p in points]
    axes[0].plot([p['train_seconds'] / 60 for p in points], y, marker='.', label=name)
    axes[1].plot([p['epoch'] for p in points], y, marker='.', label=name)
  axes[0].set_xlabel('training minutes (evaluations excluded)')
  axes[1].set_xlabel('epochs')
  axes[0].set_ylabel('validation NDCG@10')
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write(root: str, marks: list[float], keep: list[str] = (), out_dir: str | None = None,
          stem: str = 'time_to_quality') -> str:
  runs = curves(root)
  runs |= kept_curves(list(keep), set(runs))
  rows = summary(root, runs, marks)
  machines = sorted({r['machine'] for r in rows if r['machine']})
  host = tables.host_summary()
  date = time.strftime('%Y-%m-%d')
  title = f'Time to quality, {", ".join(machines) or "?"} ({host}), {date}'
  md = [f'## {title}', '']
  md += [tables.markdown(rows) if rows else '(no run with timed evaluations under ' + root + ')']
  md += ['', 'Seconds are wall seconds of training steps (evaluations and checkpoints '
         'excluded); validation NDCG@10 is on the runs\' sampled validation users, test '
         'metrics at the best checkpoint on every user or on the seeded sample that `test '
         f'users` gives (`train.train.final_eval_users`). Curves: {stem}.png, '
         f'points: {stem}.csv.']
  text = '\n'.join(md)
  out_dir = out_dir or root
  tables.write(text, [p for points in runs.values() for p in points], out_dir, stem)
  if runs and plot(runs, os.path.join(out_dir, f'{stem}.png'), title):
    text += f"\n\nPlot: {os.path.join(out_dir, f'{stem}.png')}"
  return text


def main(argv):
  del argv
  marks = [float(m) for m in FLAGS.marks]
  if not FLAGS.table_only:
    if not FLAGS.gin_file:
      raise app.UsageError('Name at least one --gin_file (or pass --table_only).')
    ablation.run_all(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.root, FLAGS.parallel,
                     FLAGS.common_gin_file)
  print(write(FLAGS.root, marks, FLAGS.keep_curves, FLAGS.curves_dir, FLAGS.curves_stem),
        flush=True)


if __name__ == '__main__':
  app.run(main)
