r"""Our test metrics beside the published TIGER and SASRec rows.

  python -m genrec.benchmarks.tiger_table --runs=runs/tiger [--runs=runs/ablation]

Reads every run directory (with results.json) under each --runs and writes
one table per data set to <first --runs>/tiger_table.md and .csv: our rows with
their budget (steps x batch), best step, training time and machine, then the
published figures (Rajput et al., 2023, Table 2).
"""

from absl import app, flags

from genrec import tables

flags.DEFINE_multi_string('runs', ['runs/tiger'], 'Folders of run directories.')
FLAGS = flags.FLAGS

METRICS = ('recall@5', 'ndcg@5', 'recall@10', 'ndcg@10')
SLICES = ('tail', 'unseen')
# (data set, model) -> R@5, N@5, R@10, N@10 as published: the TIGER paper's
# Table 2, then later papers' Beauty rows (NDCG@10 only; same leave-one-out
# full-ranking protocol).
PUBLISHED = {
    ('beauty', 'TIGER (paper)'): (0.0454, 0.0321, 0.0648, 0.0384),
    ('sports', 'TIGER (paper)'): (0.0264, 0.0181, 0.0400, 0.0225),
    ('toys', 'TIGER (paper)'): (0.0521, 0.0371, 0.0712, 0.0432),
    ('beauty', 'SASRec (TIGER paper)'): (0.0387, 0.0249, 0.0605, 0.0318),
    ('beauty', 'ActionPiece (Hou et al., 2025)'): (None, None, None, 0.0424),
    ('beauty', 'EAGER-LLM (2025)'): (None, None, None, 0.0459),
    ('beauty', 'eSASRec (2025)'): (None, None, None, 0.053),
}


def collect(roots: list[str]) -> list[dict]:
  rows = []
  for root in roots:
    for name, r in tables.finished_runs(root):
      rows.append({
          'dataset': r['dataset'], 'run': name,
          'model': f"genrec {r.get('model', 'encoder_decoder')} / {r['id_scheme']}",
          **{k: round(r['test'][k], 4) for k in METRICS},
          'invalid_rate': round(r['test']['invalid_rate'], 4),
          # NDCG@10 of the test users whose target is a tail item / an item
          # never seen as a training target (metrics.popularity_slices).
          **{f'{s} N@10': round(r['test_slices'][s]['ndcg@10'], 4)
             for s in SLICES if s in r.get('test_slices', {})},
          'budget': _budget(r), 'best_step': r['best_step'],
          # Runs from before the cumulative count have this invocation's time only.
          'train_time_s': r.get('train_seconds', r['train_time_s_this_invocation']),
          'machine': r['device']})
  for (dataset, model), values in PUBLISHED.items():
    rows.append({'dataset': dataset, 'run': '-', 'model': model,
                 **{k: '' if v is None else v for k, v in zip(METRICS, values)},
                 'invalid_rate': '', 'budget': 'paper',
                 'best_step': '', 'train_time_s': '', 'machine': ''})
  return rows


def _budget(r: dict) -> str:
  """Steps x batch, and where the run stopped before its steps (early
  stopping or a time limit), the steps and epochs it ran."""
  text = f"{r['num_train_steps']} x {r['batch_size']}"
  if r.get('stopped_early'):
    text += f" (stopped at {r['last_step']}, {r['epochs']} epochs)"
  return text


def markdown(rows: list[dict]) -> str:
  cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != 'dataset']
  out = []
  for dataset in sorted({r['dataset'] for r in rows}):
    out += [f'### {dataset}', '',
            tables.markdown([r for r in rows if r['dataset'] == dataset], cols), '']
  return '\n'.join(out)


def main(argv):
  del argv
  rows = collect(FLAGS.runs)
  md = markdown(rows)
  print(md, flush=True)
  tables.write(md, rows, FLAGS.runs[0], 'tiger_table')


if __name__ == '__main__':
  app.run(main)
