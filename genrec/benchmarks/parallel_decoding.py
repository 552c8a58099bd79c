r"""Exact catalog top-k vs trie-constrained beam search for the item-level
model's parallel head.

  python -m genrec.benchmarks.parallel_decoding --workdir=$HOME/genrec-runs/beauty_cpu/60m/item_sid_60m_s0 \
      --beams=10,50,200 --users=2000 --output_dir=docs/results

The parallel head gives every code level its own distribution, and an item's
score is the sum of its codes' log-probabilities. `score_items` ranks the
whole catalog exactly in one pass (what training evaluation, infer and the
export use); where the catalog is too large for that, a beam search over the
levels constrained to the identifier trie (`ItemSidParallel.beam_search_inputs`)
keeps `beam` prefixes per level and is approximate. For a trained run and a
seeded sample of its test users this prints, per beam size, the share of the
exact top-10 the beam search finds (`recall_of_exact@10`), both searches'
test NDCG@10 and their milliseconds per query; writes
parallel_decoding.{md,csv}.
"""

import sys
import time

from absl import app, flags
import jax
import numpy as np

from genrec import constraints, metrics, models, tables
from genrec.data import sequences
from genrec.recommendation import evaluate, features, infer

flags.DEFINE_string('workdir', None, 'A finished run of the item-level model (parallel head).')
flags.DEFINE_string('data_dir', None, 'Data folder (default $GENREC_DATA_DIR).')
flags.DEFINE_list('beams', ['10', '50', '200'], 'Beam sizes.')
flags.DEFINE_integer('users', 2000, 'Test users sampled (seed 0).')
flags.DEFINE_integer('batch_size', 250, 'Queries per call.')
flags.DEFINE_string('output_dir', None, 'Where parallel_decoding.md/.csv go.')
FLAGS = flags.FLAGS


def _timed(fn) -> tuple[np.ndarray, float]:
  fn()  # compile
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def compare(workdir: str, beams: list[int], users: int, batch_size: int,
            data_dir: str | None = None) -> list[dict]:
  """Rows of the comparison for a run directory (see the module docstring)."""
  run, config, ids, pred, params, step = infer.load_run(workdir)
  if not isinstance(config, models.ItemSidConfig):
    raise ValueError(f'{workdir} is not a run of the item-level model with the parallel head.')
  data = sequences.load_dataset(run['dataset'], data_dir)
  test = features.load_arrays(data, ids, run['max_history'], 'numpy', with_train=False)[2]
  _, test = evaluate.sample_users(models.model_for(config).model_inputs(test, ids), users, 0)
  x, target = test['encoder_input_tokens'], test['target_item']
  trie = constraints.PrefixTrie.from_ids(ids)
  catalog = ids.token_table()

  def exact():
    return np.concatenate([np.asarray(pred.rank_items(params, x[i:i + batch_size], 10,
                                                      catalog=catalog))
                           for i in range(0, len(x), batch_size)])

  exact_items, exact_s = _timed(exact)
  rows = [{'search': 'exact top-k over the catalog', 'beam': '', 'recall_of_exact@10': 1.0,
           'test_ndcg@10': round(metrics.rank_metrics(exact_items, target)['ndcg@10'], 4),
           'ms_per_query': round(1e3 * exact_s / len(x), 2)}]
  for beam in beams:
    def search():
      out = []
      for i in range(0, len(x), batch_size):
        tokens, _ = pred.predict(params, x[i:i + batch_size], beam, ids.num_levels, trie)
        out.append(ids.tokens_to_items(np.asarray(tokens))[:, :10])
      return np.concatenate(out)
    items, seconds = _timed(search)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(items, exact_items)])
    rows.append({'search': 'trie-constrained beam search', 'beam': beam,
                 'recall_of_exact@10': round(float(found), 4),
                 'test_ndcg@10': round(metrics.rank_metrics(items, target)['ndcg@10'], 4),
                 'ms_per_query': round(1e3 * seconds / len(x), 2)})
  for r in rows:
    r.update(run=workdir.rstrip('/').split('/')[-1], step=step, id_scheme=ids.scheme,
             users=len(x), device=jax.devices()[0].device_kind)
  return rows


def main(argv):
  del argv
  rows = compare(FLAGS.workdir, [int(b) for b in FLAGS.beams], FLAGS.users, FLAGS.batch_size,
                 FLAGS.data_dir)
  command = 'python -m genrec.benchmarks.parallel_decoding ' + ' '.join(sys.argv[1:])
  date = time.strftime('%Y-%m-%d')
  text = (f'# Parallel head: exact catalog top-k vs beam search\n\n`{command}` ({date}, '
          f'{tables.host_summary()})\n\n{tables.markdown(rows)}\n')
  print(text, flush=True)
  if FLAGS.output_dir:
    tables.write(text, [{**r, 'date': date, 'commit': tables.source_commit(), 'command': command}
                        for r in rows],
                 FLAGS.output_dir, 'parallel_decoding')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
