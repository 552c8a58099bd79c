"""Evaluation of a recommender: items predicted for every user, full-catalog
ranking metrics, the final metrics of record (popularity slices, the
popularity baseline, unconstrained decoding) and the predictions files.

Shared by training (`train.py`), inference (`infer.py`) and export, none of
which needs the training loop to evaluate.
"""

import json
import os

import jax
import numpy as np

from genrec import constraints, metrics, models, partitioning, predictor
from genrec.ids import ItemIds

RUN_CONFIG = 'run_config.json'  # what `infer` needs besides the ids and the checkpoint


def predict_items(pred: predictor.Predictor, params, inputs: np.ndarray, ids: ItemIds,
                  beam_size: int, batch_size: int,
                  trie: constraints.PrefixTrie | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The top `beam_size` items of every row of `inputs` (model features).

  Identifier models decode by beam search (constrained to `trie` if given);
  item-scoring models (projection head, SASRec) rank the catalog in one pass.

  Returns:
    (item ids int32 [n, beam_size], best first, 0 for an identifier that
    names no item; their scores float32 [n, beam_size]: beam log-probs, or
    the item logits).
  """
  catalog = models.model_for(pred.config).catalog(ids) if pred.scores_items else None

  def run(batch, rows):
    x = batch['x']
    if pred.scores_items:  # one pass over the catalog: exact top-k items
      items, scores = pred.rank_items(params, x, beam_size, with_scores=True, catalog=catalog)
      return partitioning.gather(items, rows), partitioning.gather(scores, rows)
    tokens, scores = pred.predict(params, x, beam_size, ids.num_levels, trie)
    return ids.tokens_to_items(partitioning.gather(tokens, rows)), partitioning.gather(
        scores, rows)
  outs = partitioning.map_batches({'x': inputs}, batch_size, pred.mesh, run)
  if not outs:
    return np.zeros((0, beam_size), np.int32), np.zeros((0, beam_size), np.float32)
  return (np.concatenate([o[0] for o in outs]).astype(np.int32),
          np.concatenate([o[1] for o in outs]).astype(np.float32))


def evaluate(pred: predictor.Predictor, params, arrays: dict[str, np.ndarray], ids: ItemIds,
             beam_size: int, batch_size: int, ks=metrics.DEFAULT_KS,
             trie: constraints.PrefixTrie | None = None
             ) -> tuple[dict[str, float], np.ndarray]:
  """`predict_items` for every example; full-catalog Recall/NDCG.

  Returns:
    (metrics, ranked item ids [n, beam_size] with 0 for invalid identifiers).
  """
  ranked, _ = predict_items(pred, params, arrays['encoder_input_tokens'], ids, beam_size,
                            batch_size, trie)
  return metrics.rank_metrics(ranked, arrays['target_item'], ks), ranked


def write_predictions(path: str, users, items: np.ndarray, scores: np.ndarray,
                      external: list[str] | None = None) -> None:
  """One JSON line per user: {"user", "items" (best first), "scores"}; items
  that name nothing (0, invalid identifiers) are left out; with `external`
  (item i's external id at index i) items are written as those ids. Process 0
  only."""
  if jax.process_index() > 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    for user, row, sc in zip(users, items, scores):
      keep = row > 0
      names = row[keep].tolist()
      if external is not None:
        names = [external[i] for i in names]
      f.write(json.dumps({'user': user, 'items': names,
                          'scores': [round(float(v), 6) for v in sc[keep]]}) + '\n')
  os.replace(path + '.tmp', path)


def sample_users(arrays: dict[str, np.ndarray], n: int | None, seed: int
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """A seeded sample of `n` users of `arrays` (all of them when n is None or
  >= their number): their row indices, in order, and their rows."""
  total = len(arrays['target_item'])
  rows = (np.arange(total) if not n or n >= total else
          np.sort(np.random.default_rng(seed).choice(total, n, replace=False)))
  return rows, {k: v[rows] for k, v in arrays.items()}


def final_results(pred: predictor.Predictor, params, splits: dict[str, dict[str, np.ndarray]],
                  ids: ItemIds, beam_size: int, batch_size: int,
                  trie: constraints.PrefixTrie | None, *, workdir: str,
                  item_slices: dict, popular: np.ndarray, users: int | None, seed: int,
                  report_unconstrained: bool) -> dict:
  """The metrics of record of every split in `splits` (name -> model features):
  full-catalog metrics, by target-item popularity slice, the popularity
  baseline's, and (with a trie and `report_unconstrained`) the test split
  decoded without constraints. Each split's predictions go to
  workdir/predictions/<split>.jsonl.

  Args:
    item_slices: `metrics.popularity_slices` of the data.
    popular: the most popular training items, best first (the baseline).
    users: a seeded sample of that many users per split (None: every user).
  """
  results, sampled = {}, {}
  for split, arrays in splits.items():
    rows, arrays = sample_users(arrays, users, seed)
    sampled[split] = arrays
    targets = arrays['target_item']
    ranked, scores = predict_items(pred, params, arrays['encoder_input_tokens'], ids,
                                   beam_size, batch_size, trie)
    write_predictions(os.path.join(workdir, 'predictions', f'{split}.jsonl'),
                      rows.tolist(), ranked, scores)
    results[split] = metrics.rank_metrics(ranked, targets)
    results[f'{split}_slices'] = metrics.sliced_metrics(ranked, targets, item_slices)
    pop_ranked = np.tile(popular, (len(targets), 1))
    results[f'popularity_{split}'] = metrics.rank_metrics(pop_ranked, targets)
    results[f'popularity_{split}_slices'] = metrics.sliced_metrics(pop_ranked, targets,
                                                                   item_slices)
  if trie is not None and report_unconstrained and 'test' in sampled:
    results['test_unconstrained'], _ = evaluate(pred, params, sampled['test'], ids,
                                                beam_size, batch_size)
  return results


def results_table(results: dict) -> str:
  """A markdown table of the final metrics beside the popularity baseline."""
  keys = [k for k in results['test'] if k != 'invalid_rate'] + ['invalid_rate']
  lines = [f"## {results['dataset']} / {results['id_scheme']} (best step "
           f"{results['best_step']} of {results['num_train_steps']})", '',
           '| model | split | ' + ' | '.join(keys) + ' |',
           '|---|---|' + '---|' * len(keys)]
  for name, prefix in (('genrec', ''), ('popularity', 'popularity_')):
    for split in ('validation', 'test'):
      m = results[prefix + split]
      lines.append(f'| {name} | {split} | ' + ' | '.join(f'{m[k]:.4f}' for k in keys) + ' |')
  if 'test_unconstrained' in results:
    m = results['test_unconstrained']
    lines.append('| genrec, no constraints | test | '
                 + ' | '.join(f'{m[k]:.4f}' for k in keys) + ' |')
  lines += ['', 'Test by target-item popularity (training-target frequency):', '',
            '| model | slice | users | recall@10 | ndcg@10 |', '|---|---|---|---|---|']
  for name, prefix in (('genrec', ''), ('popularity', 'popularity_')):
    for slice_name, m in results.get(f'{prefix}test_slices', {}).items():
      lines.append(f"| {name} | {slice_name} | {m['users']} | {m['recall@10']:.4f} | "
                   f"{m['ndcg@10']:.4f} |")
  return '\n'.join(lines)
