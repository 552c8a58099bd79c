"""Export: a training run's checkpoint -> serving directory (StableHLO and a
TensorFlow SavedModel) whose answers equal in-framework inference, at batch
sizes other than any traced."""

import dataclasses
import json
import os

import numpy as np
import pytest

import jax
from flax import nnx

from genrec import artifact, constraints, models, partitioning, trainer
from genrec.data import sequences
from genrec.ids import AtomicIds, ItemIds, RandomCodeIds, ResidualKMeansIds
from genrec.ranking import export as ranking_export, ranker
from genrec.recommendation import evaluate, export, features, infer, train

TINY = models.EncoderDecoderConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                   num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
_WIDTH = dict(d_model=32, num_heads=2, head_dim=16, d_ff=64, dropout_rate=0.0)
CASES = {
    'encoder_decoder': dict(id_scheme=RandomCodeIds(num_levels=2)),
    'decoder_only': dict(id_scheme=RandomCodeIds(num_levels=2), model=models.DecoderOnlyModel(
        models.DecoderOnlyConfig(num_layers=2, **_WIDTH))),
    'projection': dict(id_scheme=RandomCodeIds(num_levels=2), model=models.ProjectionModel(TINY)),
    'sasrec': dict(id_scheme=AtomicIds(), model=models.SASRecModel(
        models.SASRecConfig(num_layers=1, activation='relu', **_WIDTH))),
    **{f'item_sid_{head}': dict(
        id_scheme=ResidualKMeansIds(num_levels=2, codebook_size=8),
        model=model_cls(model_cls.CONFIG(num_layers=1, **_WIDTH)))
       for head, model_cls in (('parallel', models.ItemSidModel),
                               ('autoregressive', models.ItemSidAutoregressiveModel))},
}


@pytest.mark.parametrize('kind', list(CASES))
def test_exported_artifact_answers_like_the_framework(tmp_path, kind):
  data = sequences.make_synthetic(num_users=120, num_items=50, seed=0)
  run = str(tmp_path / 'run')
  args = dict(workdir=run, dataset=data, model=models.EncoderDecoderModel(TINY),
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=5),
              # A checkpoint of 8 data-parallel devices for one case, of one
              # device (sooner compiled) for the others.
              mesh_fn=(lambda: partitioning.make_mesh(-1, 1, 1)) if kind == 'encoder_decoder'
              else lambda: partitioning.make_mesh(devices=jax.devices()[:1]), batch_size=32,
              num_train_steps=10, stop_after_step=5, log_every_steps=5, input_pipeline='numpy')
  args.update(CASES[kind])
  train.train(**args)  # a checkpoint at step 5, no evaluation
  # beam search; one-pass scores (SASRec's and the item-level model's)
  with_saved_model = kind in ('encoder_decoder', 'sasrec', 'item_sid_parallel')
  # The default platforms (CPU, CUDA, TPU) once; the other cases CPU only.
  out = export.export(run, **({} if kind == 'encoder_decoder' else {'platforms': ('cpu',)}),
                      saved_model=with_saved_model)
  manifest = json.loads(open(os.path.join(out, 'manifest.json')).read())
  assert manifest['platforms'] == (['cpu', 'cuda', 'tpu'] if kind == 'encoder_decoder'
                                  else ['cpu'])
  assert manifest['checkpoint_step'] == 5 and manifest['constrained_decoding'] == (
      kind in ('encoder_decoder', 'decoder_only', 'item_sid_autoregressive'))
  # In-framework inference of the same checkpoint (what infer and evaluation run).
  _, config, ids, pred, params, _ = infer.load_run(run, mesh_fn=args['mesh_fn'])
  eval_arrays = features.load_arrays(data, ids, 20, 'numpy', with_train=False)[2]
  inputs = models.model_for(config).model_inputs(eval_arrays, ids)['encoder_input_tokens']
  trie = constraints.PrefixTrie.from_ids(ids) if not config.scores_items else None
  want_items, want_scores = evaluate.predict_items(pred, params, inputs, ids, 10, 64, trie)
  served = artifact.Artifact(out)
  history = sequences.leave_one_out(data, 20)['test'].history
  cuts = (0, 3, len(history)) if kind == 'encoder_decoder' else (0, len(history))
  items, scores = (np.concatenate(parts) for parts in zip(
      *(served(history[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:]))))
  assert served.kind == 'recommender' and served.k == 10
  np.testing.assert_array_equal(items, want_items)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'history must be int32 \[batch, 20\]'):
    served(history[:, :5])
  if with_saved_model:
    _check_saved_model(out, manifest, {'history': history},
                       {'items': want_items, 'scores': want_scores})


def _check_saved_model(out, manifest, inputs: dict, want: dict, warmup_batches=(1, 8)):
  """The SavedModel answers as the framework (`want`: output name -> array)
  through every signature name, at the full batch and a smaller one, and its
  TF Serving warm-up requests run."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  spec = manifest['saved_model']
  path = os.path.join(out, spec['base_path'], str(spec['version']))
  model = tf.saved_model.load(path)
  for name, rows in zip(spec['signatures'], (7, None)):
    got = model.signatures[name](**{k: tf.constant(v[:rows]) for k, v in inputs.items()})
    for key, value in want.items():
      if value.dtype.kind == 'f':
        np.testing.assert_allclose(got[key].numpy(), value[:rows], rtol=1e-4, atol=1e-4)
      else:
        np.testing.assert_array_equal(got[key].numpy(), value[:rows])
  batches = []
  for record in tf.data.TFRecordDataset(os.path.join(path, spec['warmup'])):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    assert request.model_spec.signature_name == 'serving_default'
    got = model.signatures['serving_default'](
        **{k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    batches.append(next(iter(got.values())).shape[0])
  assert tuple(batches) == warmup_batches


def test_exported_ranker_scores_like_the_framework(tmp_path):
  data = sequences.make_synthetic(num_users=150, num_items=60, seed=0)
  data = dataclasses.replace(data, item_keys=('',) + tuple(f'A{i:04d}' for i in range(1, 61)))
  run = str(tmp_path / 'ranker')
  ranker.train_and_evaluate(
      'sid_unigram', 128, run, dataset=data,
      sid_scheme=ResidualKMeansIds(num_levels=2, codebook_size=8, dedup=False),
      config=ranker.RankerConfig(dim=8, mlp_dims=(16,)), num_train_steps=20, batch_size=32,
      eval_negatives=9, cold_fraction=0.2, log_every_steps=20,
      mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  out = ranking_export.export(run, platforms=('cpu',))
  manifest = json.loads(open(os.path.join(out, 'manifest.json')).read())
  assert manifest['kind'] == 'ranker' and manifest['metrics_at_step'] == {}
  # In-framework scores of the same checkpoint (the evaluation's jitted model call).
  _, _, graphdef, params, feats, _ = ranking_export.load(run)
  logits = jax.jit(lambda p, h, c, rows, mask: nnx.merge(graphdef, p)(h, c, rows, mask))
  history = sequences.leave_one_out(data, 20)['test'].history[:13]
  candidates = np.random.default_rng(0).integers(0, 61, (13, 9)).astype(np.int32)
  want = np.asarray(logits(params, history, candidates, feats['rows'], feats['mask']))
  served = artifact.Artifact(out).expect('ranker')
  for count in (9, 4):  # candidate counts: symbolic
    got, = served(history, candidates[:, :count])
    np.testing.assert_allclose(got, want[:, :count], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.argsort(-got, 1), np.argsort(-want[:, :4], 1))
  assert served.external_ids()[1:3] == ['A0001', 'A0002']
  with pytest.raises(ValueError, match=r'candidates must be int32 \[batch, candidates\]'):
    served(history, candidates[:5])
  with pytest.raises(ValueError, match='holds a ranker, not a recommender'):
    served.expect('recommender')
  _check_saved_model(out, manifest, {'history': history, 'candidates': candidates},
                     {'scores': want})



def test_unreadable_serving_directory_says_what_to_do(tmp_path):
  with pytest.raises(ValueError, match='not a readable genrec serving directory'):
    artifact.Artifact(str(tmp_path))


def test_device_identifier_to_item_map_equals_the_host_one():
  rng = np.random.default_rng(0)
  codes = np.r_[[[-1, -1]], rng.integers(0, 8, (300, 2))]  # 64 codes: collisions
  ids = ItemIds(codes, (8, 8), 'test')
  trie = constraints.PrefixTrie.from_ids(ids)
  tokens = np.concatenate([ids.token_table()[1:],  # every item's identifier
                           rng.integers(0, ids.vocab_size, (500, ids.num_levels))]).astype(
                               np.int32)
  got = np.asarray(constraints.trie_tokens_to_items(trie, constraints.leaf_items(ids), tokens))
  np.testing.assert_array_equal(got, ids.tokens_to_items(tokens))
  assert ids.num_collisions > 0 and (got > 0).sum() >= 300
