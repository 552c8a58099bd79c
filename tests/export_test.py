"""Export: a training run's checkpoint -> StableHLO serving directory whose
answers equal in-framework inference, at batch sizes other than any traced."""

import dataclasses
import json
import os

import numpy as np
import pytest

from genrec import constraints, models, partitioning, trainer
from genrec.data import sequences
from genrec.ids import AtomicIds, ItemIds, RandomCodeIds
from genrec.recommendation import artifact, export, infer, train

TINY = models.TransformerConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
CASES = {
    'encoder_decoder': dict(id_scheme=RandomCodeIds(num_levels=2)),
    'decoder_only': dict(id_scheme=RandomCodeIds(num_levels=2),
                         model_config=dataclasses.replace(TINY, architecture='decoder_only')),
    'projection': dict(id_scheme=RandomCodeIds(num_levels=2), head='projection'),
    'sasrec': dict(id_scheme=AtomicIds(), head='projection', model_config=dataclasses.replace(
        TINY, architecture='sasrec', num_decoder_layers=0)),
}


@pytest.mark.parametrize('kind', list(CASES))
def test_exported_artifact_answers_like_the_framework(tmp_path, kind):
  data = sequences.make_synthetic(num_users=120, num_items=50, seed=0)
  run = str(tmp_path / 'run')
  args = dict(workdir=run, dataset=data, model_config=TINY,
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=5),
              mesh_fn=lambda: partitioning.make_mesh(-1, 1, 1), batch_size=32,
              num_train_steps=10, stop_after_step=5, log_every_steps=5, input_pipeline='numpy')
  args.update(CASES[kind])
  train.train(**args)  # a checkpoint at step 5, no evaluation
  out = export.export(run, platforms=('cpu', 'cuda') if kind == 'encoder_decoder'
                      else ('cpu',))
  manifest = json.loads(open(os.path.join(out, 'manifest.json')).read())
  assert manifest['checkpoint_step'] == 5 and manifest['constrained_decoding'] == (
      kind in ('encoder_decoder', 'decoder_only'))
  # In-framework inference of the same checkpoint (what infer and evaluation run).
  _, config, ids, pred, params, _ = infer.load_run(run, mesh_fn=args['mesh_fn'])
  eval_arrays = train.load_arrays(data, ids, 20, 'numpy', with_train=False)[2]
  inputs = train.model_inputs(eval_arrays, ids, config)['encoder_input_tokens']
  trie = constraints.PrefixTrie.from_ids(ids) if not config.num_items else None
  want_items, want_scores = train.predict_items(pred, params, inputs, ids, 10, 64, trie)
  served = artifact.Artifact(out)
  history = sequences.leave_one_out(data, 20)['test'].history
  cuts = (0, 3, len(history)) if kind == 'encoder_decoder' else (0, len(history))
  items, scores = (np.concatenate(parts) for parts in zip(
      *(served(history[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:]))))
  np.testing.assert_array_equal(items, want_items)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'history must be int32 \[batch, 20\]'):
    served(history[:, :5])


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
  got = np.asarray(export.trie_tokens_to_items(trie, export.leaf_items(ids), tokens))
  np.testing.assert_array_equal(got, ids.tokens_to_items(tokens))
  assert ids.num_collisions > 0 and (got > 0).sum() >= 300
