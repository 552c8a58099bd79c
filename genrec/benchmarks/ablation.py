r"""Runs several gin experiments at one shared budget and tabulates their results.

  python -m genrec.benchmarks.ablation \
    --gin_file=gin/recommendation/beauty_atomic.gin \
    --gin_file=gin/recommendation/beauty_rqvae.gin \
    --common_gin_file=gin/budgets/3k.gin \
    --gin_bindings="DATA_DIR='../shared/data'" --root=runs/ablation --parallel=2

Each gin file becomes the run directory `<root>/<file name without .gin>`
(`main.py` runs it, its log goes to `<root>/<name>.log`); a run directory that
already holds results.json is not run again. With `--parallel=N` the runs
share the machine (on one GPU each process gets 1/N of its memory). The
table (`<root>/ablation.md`, `.csv`) is built from the run directories, so
`--table_only` rebuilds it from finished runs without training anything.
"""

import json
import os
import signal
import subprocess
import sys
import time

from absl import app, flags

from genrec import tables

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('gin_file', [], 'One experiment per file.')
flags.DEFINE_multi_string('common_gin_file', [], 'Gin files read after each experiment\'s '
                          'own file, e.g. a shared budget.')
flags.DEFINE_multi_string('gin_bindings', [], 'Bindings shared by every experiment.')
flags.DEFINE_string('root', 'runs/ablation', 'Folder of the run directories and the table.')
flags.DEFINE_integer('parallel', 1, 'Experiments run at the same time.')
flags.DEFINE_bool('table_only', False, 'Only tabulate the run directories under --root.')
flags.DEFINE_string('title', 'Ablation', 'Heading of the markdown table.')

METRICS = ('recall@5', 'ndcg@5', 'recall@10', 'ndcg@10')
MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'main.py')


def _command(gin_files: list[str], bindings: list[str], workdir: str) -> list[str]:
  return ([sys.executable, MAIN, f'--workdir={workdir}'] + [f'--gin_file={f}' for f in gin_files]
          + [f'--gin_bindings={b}' for b in bindings])


def run_all(gin_files: list[str], bindings: list[str], root: str, parallel: int,
            common_gin_files: tuple[str, ...] = ()) -> None:
  """Runs every experiment, `parallel` at a time; prints a line as each ends."""
  if not os.path.exists(MAIN):
    raise FileNotFoundError(f'{MAIN} not found: run from a checkout of genrec.')
  os.makedirs(root, exist_ok=True)
  env = dict(os.environ)
  if parallel > 1:  # share one accelerator's memory instead of preallocating 75% each
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / parallel:.3f}')
  todo = []
  for f in gin_files:
    name = os.path.splitext(os.path.basename(f))[0]
    workdir = os.path.join(root, name)
    if os.path.exists(os.path.join(workdir, 'results.json')):
      print(f'{name}: results.json exists, not run again', flush=True)
    else:
      todo.append((name, _command([f, *common_gin_files], bindings, workdir)))
  running, failed, t0 = {}, [], time.time()
  # A SIGTERM (e.g. from `timeout`) stops the runs too instead of orphaning them.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(f'Terminated; stopping {list(running)}'))
  try:
    _loop(todo, running, failed, root, env, parallel, t0)
  finally:
    for proc, log in running.values():
      proc.terminate()
      proc.wait()
      log.close()
  if failed:
    print(f'Failed runs: {failed}; see their logs under {root}.', flush=True)


def _loop(todo, running, failed, root, env, parallel, t0) -> None:
  while todo or running:
    while todo and len(running) < parallel:
      name, cmd = todo.pop(0)
      log = open(os.path.join(root, f'{name}.log'), 'w')
      print(f'{name}: started ({" ".join(cmd[1:])})', flush=True)
      running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    time.sleep(2)
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        del running[name]
        status = 'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'
        print(f'{name}: {status} after {time.time() - t0:.0f}s; log {log.name}', flush=True)
        if proc.returncode:
          failed.append(name)


def _curve(workdir: str) -> str:
  path = os.path.join(workdir, 'eval_history.jsonl')
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return ' '.join(f"{r['step']}:{r.get('validation/ndcg@10', float('nan')):.4f}" for r in rows)


def table(root: str, title: str) -> tuple[str, list[dict]]:
  """Markdown and CSV rows of every run directory under `root` with results."""
  rows = []
  for name, r in tables.finished_runs(root):
    base = {'run': name, 'model': r.get('model', 'encoder_decoder'),
            'id_scheme': r['id_scheme'], 'params': r['params'],
            'budget': f"{r['num_train_steps']}x{r['batch_size']}", 'best_step': r['best_step'],
            'train_time_s': r['train_time_s_this_invocation'], 'device': r['device'],
            'collisions': r['identifier_collisions']}
    for split in ('validation', 'test'):
      rows.append(base | {'split': split}
                  | {k: r[split][k] for k in METRICS}
                  | {'invalid_rate': r[split]['invalid_rate'],
                     'val_ndcg@10_curve': _curve(os.path.join(root, name))})
    popularity = r['popularity_test']
  lines = [f'## {title}', '']
  if not rows:
    return '\n'.join(lines + ['(no finished runs)']), rows
  cols = ['run', 'model', 'id_scheme', 'split', *METRICS, 'invalid_rate', 'budget', 'best_step',
          'train_time_s', 'device']
  rates = (*METRICS, 'invalid_rate')
  lines += tables.markdown(rows, cols, lambda c, v: f'{v:.4f}' if c in rates else str(v)
                           ).splitlines()
  lines.append('| popularity | - | - | test | ' + ' | '.join(f'{popularity[k]:.4f}' for k in METRICS)
               + ' | 0 | - | - | - | - |')
  lines += ['', 'Validation NDCG@10 during training (sampled users), step:value:', '']
  lines += [f"- {row['run']}: {row['val_ndcg@10_curve']}" for row in rows
            if row['split'] == 'validation']
  return '\n'.join(lines), rows


def write_table(root: str, title: str) -> str:
  md, rows = table(root, title)
  tables.write(md, rows, root, 'ablation')
  return md


def main(argv):
  del argv
  if not FLAGS.table_only:
    if not FLAGS.gin_file:
      raise app.UsageError('Name at least one --gin_file (or pass --table_only).')
    run_all(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.root, FLAGS.parallel,
            FLAGS.common_gin_file)
  print(write_table(FLAGS.root, FLAGS.title), flush=True)


if __name__ == '__main__':
  app.run(main)
