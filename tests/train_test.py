"""End-to-end: tiny runs through train(), resume equality, corrupt checkpoints, gin files."""

import dataclasses
import glob
import json
import os

import gin
import jax
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from genrec import loop, models, partitioning, trainer
from genrec.data import sequences
from genrec.recommendation import infer, train
from genrec.ids import AtomicIds, ProductQuantizationIds, RandomCodeIds

TINY = models.EncoderDecoderConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                   num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)
_WIDTH = dict(d_model=32, num_heads=2, head_dim=16, d_ff=64, dropout_rate=0.1)
SASREC = models.SASRecModel(models.SASRecConfig(num_layers=1, activation='relu', **_WIDTH))
DECODER_ONLY = models.DecoderOnlyModel(models.DecoderOnlyConfig(num_layers=2, **_WIDTH))


@pytest.fixture(autouse=True)
def small_synthetic(monkeypatch):
  real = sequences.make_synthetic
  monkeypatch.setattr(sequences, 'make_synthetic',
                      lambda **kw: real(**{'num_users': 300, 'num_items': 80, **kw}))


# Most runs use one device (on 2 cores a tiny model's step on the 8 fake
# devices is about twice as slow); the interrupted-run test trains on a
# data x fsdp x model mesh end to end, and partitioning_test checks that every
# mesh gives one device's steps.
SHARDED = lambda: partitioning.make_mesh(data=-1, fsdp=2, model=2)  # noqa: E731


def _run(workdir, **kw):
  args = dict(workdir=str(workdir), dataset='synthetic', model=models.EncoderDecoderModel(TINY),
              optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=3e-3,
                                                            warmup_steps=10),
              mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]),
              batch_size=32, eval_batch_size=64, log_every_steps=1,
              # The seqio pipeline costs seconds per run; tasks_test checks that it
              # gives the same arrays, and the main.py tests run it.
              input_pipeline='numpy')
  args.update(kw)
  return train.train(**args)


def _losses(workdir):
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f)}


def _infer_gives_the_test_predictions(workdir) -> list[dict]:
  """infer from a finished synthetic run's checkpoint on its test histories
  writes the run's own test predictions; returns them."""
  test = sequences.leave_one_out(sequences.make_synthetic(seed=0), 20)['test']
  inp = workdir / 'histories.jsonl'
  inp.write_text(''.join(json.dumps({'user': i, 'history': h[h > 0].tolist()}) + '\n'
                         for i, h in enumerate(test.history)))
  out = infer.infer(str(workdir), str(inp),
                    mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]))
  got = [json.loads(line) for line in open(out)]
  want = [json.loads(line) for line in open(workdir / 'predictions' / 'test.jsonl')]
  assert [g['items'] for g in got] == [w['items'] for w in want]
  return got


def test_train_evaluate_and_beat_popularity(tmp_path):
  results = _run(tmp_path, num_train_steps=150, eval_every_steps=75,
                 checkpoint_every_steps=75, id_scheme=RandomCodeIds(num_levels=2))
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved == json.loads(json.dumps(results))
  for split in ('validation', 'test'):
    assert set(results[split]) == {'recall@5', 'recall@10', 'ndcg@5', 'ndcg@10',
                                   'invalid_rate'}
    assert results[split]['recall@10'] > results[f'popularity_{split}']['recall@10']
    assert results[split]['invalid_rate'] == 0  # constrained decoding (the default)
    slices = results[f'{split}_slices']
    assert sum(m['users'] for m in slices.values()) == results['num_users']
  assert 'invalid_rate' in results['test_unconstrained']
  assert results['best_step'] in (75, 150)
  assert (tmp_path / 'config.gin').exists() and (tmp_path / 'ids' / 'codes.npy').exists()
  # TensorBoard scalars (written without TensorFlow) read back by TensorFlow.
  events, = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  scalars = {}
  for e in tf.compat.v1.train.summary_iterator(events):
    for v in e.summary.value:
      scalars[v.tag, e.step] = v.simple_value
  assert len([s for tag, s in scalars if tag == 'train/loss']) == 150
  assert scalars['final_test/ndcg@10', 150] == pytest.approx(results['test']['ndcg@10'])
  assert len(_losses(tmp_path)) == 150


def test_interrupted_run_resumes_with_identical_losses(tmp_path):
  common = dict(num_train_steps=8, eval_every_steps=100, checkpoint_every_steps=100,
                mesh_fn=SHARDED)
  full = tmp_path / 'full'
  _run(full, **common)
  part = tmp_path / 'part'
  out = _run(part, stop_after_step=4, **common)
  assert out == {'stopped_at_step': 4}
  assert sorted(_losses(part)) == [1, 2, 3, 4]
  resumed = _run(part, **common)
  assert resumed['resumed_from_step'] == 4
  a, b = _losses(full), _losses(part)
  assert sorted(b) == list(range(1, 9))
  np.testing.assert_allclose([b[s] for s in range(5, 9)], [a[s] for s in range(5, 9)],
                             rtol=1e-6)
  # A different batch size cannot silently resume from this checkpoint.
  with pytest.raises(ValueError, match=r'started with other settings(.|\n)*batch_size: 32 -> 16'):
    _run(part, num_train_steps=12, eval_every_steps=100, checkpoint_every_steps=100,
         batch_size=16)


def _corrupt(step_dir):
  for path in step_dir.rglob('*'):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b'\0corrupt')


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
  common = dict(num_train_steps=2, eval_every_steps=100, checkpoint_every_steps=100)
  _run(tmp_path, stop_after_step=1, **common)
  _corrupt(tmp_path / 'checkpoints' / '1' / 'state')
  with pytest.raises(ValueError, match=r'Cannot restore checkpoint .*checkpoints/1 \(step 1\)'):
    _run(tmp_path, checkpoint_fallback=False, **common)
  # With the fallback (the default) the folder is moved aside, never deleted.
  with pytest.raises(ValueError, match='No readable checkpoint'):
    _run(tmp_path, **common)
  assert glob.glob(str(tmp_path / 'checkpoints' / '1.unreadable-*' / 'state'))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  common = dict(num_train_steps=4, eval_every_steps=100, checkpoint_every_steps=1)
  _run(tmp_path, stop_after_step=3, **common)
  _corrupt(tmp_path / 'checkpoints' / '3' / 'state')
  results = _run(tmp_path, **common)
  assert results['resumed_from_step'] == 2 and results['best_step'] == 4
  assert glob.glob(str(tmp_path / 'checkpoints' / '3.unreadable-*'))


def test_changed_settings_are_refused_or_recorded(tmp_path):
  common = dict(num_train_steps=3, eval_every_steps=100, checkpoint_every_steps=100)
  _run(tmp_path, stop_after_step=1, **common)
  other_lr = lambda n: trainer.make_optimizer(n, learning_rate=1e-2, warmup_steps=10)
  run_config = (tmp_path / 'run_config.json').read_text()
  with pytest.raises(ValueError, match=r'(?s)other settings.*optimizer.constants.*Use a new'):
    _run(tmp_path, optimizer_fn=other_lr,
         model=models.EncoderDecoderModel(dataclasses.replace(TINY, d_ff=128)),
         **common)
  assert (tmp_path / 'run_config.json').read_text() == run_config  # untouched
  results = _run(tmp_path, optimizer_fn=other_lr, allow_config_change=True, **common)
  assert results['resumed_from_step'] == 1
  change = json.loads((tmp_path / 'settings_changes.jsonl').read_text())
  assert 'optimizer.constants' in change['changes']
  starts = sorted(os.listdir(tmp_path / 'config'))
  assert len(starts) == 2 and starts[0].startswith('start_001_step0')
  events = [json.loads(x)['event'] for x in (tmp_path / 'run_manifest.jsonl').read_text()
            .splitlines()]
  assert events == ['start', 'start', 'end']


def test_a_run_recorded_before_the_model_classes_resumes_as_it_was(tmp_path):
  """Runs started when a TransformerConfig named the model by `architecture`
  (and train.train had a `head`) recorded their settings in that form: the
  same model is no change of settings, another one still is."""
  common = dict(num_train_steps=3, eval_every_steps=100, checkpoint_every_steps=100)
  _run(tmp_path, stop_after_step=1, **common)
  path = tmp_path / 'run_settings.json'
  saved = json.loads(path.read_text())
  fields = {k.split('.', 1)[1]: v for k, v in saved.items() if k.startswith('model_config.')}
  old = dataclasses.asdict(models.TransformerConfig(**fields, architecture='encoder_decoder'))
  legacy = {k: v for k, v in saved.items() if not k.startswith('model_config.') and k != 'model'}
  legacy.update({f'model_config.{k}': v for k, v in old.items()}, head='beam')
  path.write_text(json.dumps(legacy))
  with pytest.raises(ValueError, match=r'model_config.d_ff: 64 -> 128'):
    _run(tmp_path, model=models.EncoderDecoderModel(dataclasses.replace(TINY, d_ff=128)),
         **common)
  assert _run(tmp_path, **common)['resumed_from_step'] == 1
  assert not (tmp_path / 'settings_changes.jsonl').exists()


@pytest.mark.parametrize('head', ['parallel', 'autoregressive'])
def test_an_item_sid_run_recorded_before_the_head_classes_resumes_as_it_was(tmp_path, head):
  """Runs of the item-level model started when one ItemSidConfig named its
  head by `head` (and held both heads' fields) recorded their settings and
  config in that form: they resume without a change of settings."""
  model = {'parallel': models.ItemSidModel,
           'autoregressive': models.ItemSidAutoregressiveModel}[head]
  common = dict(num_train_steps=3, eval_every_steps=100, checkpoint_every_steps=100,
                id_scheme=RandomCodeIds(num_levels=2), model=model(model.CONFIG(
                    d_model=32, num_heads=2, head_dim=16, d_ff=64, num_layers=1)))
  _run(tmp_path, stop_after_step=1, **common)
  both_heads = {'head': head, 'head_layers': 1, 'temperature': 0.0, 'loss': 'codes'}
  path = tmp_path / 'run_settings.json'
  saved = json.loads(path.read_text())
  saved.update({f'model_config.{k}': v for k, v in both_heads.items()})
  path.write_text(json.dumps(saved))
  run_config = json.loads((tmp_path / 'run_config.json').read_text())
  run_config['model_config'].update(both_heads)
  run_config['model_class'] = 'ItemSidConfig'
  (tmp_path / 'run_config.json').write_text(json.dumps(run_config))
  results = _run(tmp_path, **common)
  assert results['resumed_from_step'] == 1 and results['model'] == f'item_sid ({head} head)'
  assert not (tmp_path / 'settings_changes.jsonl').exists()


def test_rerun_of_a_finished_run_keeps_its_results(tmp_path):
  common = dict(num_train_steps=3, eval_every_steps=100, checkpoint_every_steps=100)
  first = _run(tmp_path, **common)
  saved = (tmp_path / 'results.json').read_text()
  again = _run(tmp_path, **common)
  assert again == json.loads(saved) and (tmp_path / 'results.json').read_text() == saved
  _run(tmp_path, reevaluate=True, **common)
  history = (tmp_path / 'results_history.jsonl').read_text().splitlines()
  assert len(history) == 2 and (tmp_path / 'results.json').read_text() == saved
  assert json.loads(history[1])['test'] == first['test']  # same checkpoint, same numbers
  # Final metrics of a user sample (an estimate): the sampled users' own predictions.
  sample = _run(tmp_path, reevaluate=True, final_eval_users=40, **common)
  assert sample['final_eval_users'] == 40 and first['final_eval_users'] is None
  assert sum(m['users'] for m in sample['test_slices'].values()) == 40
  lines = (tmp_path / 'predictions' / 'test.jsonl').read_text().splitlines()
  users = [json.loads(line)['user'] for line in lines]
  assert len(users) == 40 and users == sorted(users) and users[-1] < first['num_users']
  # A shorter budget never reports steps it did not run.
  with pytest.raises(ValueError, match='beyond num_train_steps = 2'):
    _run(tmp_path, num_train_steps=2, eval_every_steps=100, allow_config_change=True)


def test_a_run_continued_past_its_time_budget_rewrites_its_results(tmp_path):
  """A run stopped by max_train_seconds and started again with a larger budget
  trains on; its results.json then holds the new final metrics."""
  common = dict(num_train_steps=20, eval_every_steps=10, checkpoint_every_steps=10)
  first = _run(tmp_path, max_train_seconds=1e-3, **common)
  assert first['last_step'] == 10 and first['stopped_early']
  second = _run(tmp_path, **common)
  assert second['last_step'] == 20 and second['resumed_from_step'] == 10
  assert json.loads((tmp_path / 'results.json').read_text())['last_step'] == 20
  assert len((tmp_path / 'results_history.jsonl').read_text().splitlines()) == 2


def test_a_finished_run_without_checkpoints_is_refused_unless_retrain(tmp_path):
  import shutil
  common = dict(num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4)
  first = _run(tmp_path, **common)
  shutil.rmtree(tmp_path / 'checkpoints')
  with pytest.raises(ValueError, match='no readable checkpoint'):
    _run(tmp_path, **common)
  again = _run(tmp_path, retrain=True, **common)
  assert again['resumed_from_step'] is None and again['test'] == first['test']
  aside = list((tmp_path / 'previous').iterdir())
  assert len(aside) == 1 and json.loads((aside[0] / 'results.json').read_text())['test'] == (
      first['test'])
  steps = [json.loads(line)['step'] for line in open(tmp_path / 'train_log.jsonl')]
  assert steps == [1, 2, 3, 4]  # the new run's records only


def test_ids_artifact_of_another_scheme_is_refused(tmp_path):
  _run(tmp_path, num_train_steps=1, eval_every_steps=100, checkpoint_every_steps=100,
       stop_after_step=0, id_scheme=AtomicIds())
  with pytest.raises(ValueError, match='use a new --workdir'):
    _run(tmp_path, num_train_steps=1, id_scheme=RandomCodeIds())


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO_ROOT, 'gin', '**', '*.gin'),
                                            recursive=True)))
def test_gin_files_parse(path):
  gin.clear_config()
  gin.add_config_file_search_path(REPO_ROOT)
  try:
    # Parsing imports the modules and checks every binding against its signature.
    gin.parse_config_files_and_bindings([path], [
        "DATASET='synthetic'", "DATA_DIR='/x'", "INPUT_FILE='/x'", "QUERIES_FILE='/x'",
        "RETRIEVER='/x'", "COLLECTION='x'", "DOCUMENTS='/x'", "RECOMMENDER='/x'", "ITEMS='/x'",
        # The run file alone: experiments include a model file that binds MODEL.
        *(['MODEL=None'] if path.endswith('runs/train.gin') else [])])
    if path.endswith(('runs/retrieval.gin', 'runs/ranking.gin', 'runs/infer.gin',
                      'runs/retrieval_infer.gin', 'runs/export.gin',
                      'runs/export_ranker.gin', 'runs/export_retriever.gin',
                      'runs/add_documents.gin', 'runs/add_items.gin')):
      assert gin.query_parameter('launch.run_experiment.run') is not None
    elif '/retrieval/' in path:
      assert gin.query_parameter('docgen.train_and_evaluate.num_train_steps') > 0
    elif '/ranking/' in path:
      assert gin.query_parameter('ranker.train_and_evaluate.num_train_steps') > 0
    elif '/sharding/' in path:
      assert gin.query_parameter('partitioning.make_mesh.strategy') in partitioning.STRATEGIES
    elif '/models/' not in path and '/budgets/' not in path:  # those are fragments
      assert gin.query_parameter('train.train.dataset') is not None
  finally:
    gin.clear_config()


@pytest.mark.parametrize('kind', ['projection', 'sasrec'])
def test_item_scoring_models_train_and_rank_the_catalog(tmp_path, kind):
  model = SASREC if kind == 'sasrec' else models.ProjectionModel(TINY)
  results = _run(tmp_path, num_train_steps=150, eval_every_steps=150, model=model,
                 checkpoint_every_steps=150)
  for split in ('validation', 'test'):
    assert results[split]['invalid_rate'] == 0  # items are ranked directly
    assert results[split]['recall@10'] > results[f'popularity_{split}']['recall@10']
  assert 'test_unconstrained' not in results
  assert results['model'] == ('sasrec' if kind == 'sasrec' else
                              'encoder_decoder + projection head')


def test_decoder_only_model_trains_on_whole_sequences_and_decodes_valid_ids(tmp_path):
  """The sequence-level generative model: one example per user window, every
  next-item position trained at once, trie-constrained beam search."""
  results = _run(tmp_path, num_train_steps=150, eval_every_steps=150,
                 checkpoint_every_steps=150, id_scheme=RandomCodeIds(num_levels=2),
                 model=DECODER_ONLY)
  assert results['training_examples'] == 'sequence'
  assert results['num_train_examples'] < 400  # windows, not the thousands of prefixes
  for split in ('validation', 'test'):
    assert results[split]['invalid_rate'] == 0
    assert results[split]['recall@10'] > results[f'popularity_{split}']['recall@10']
  # infer from the checkpoint (histories continue in place: 0-padded at the start).
  _infer_gives_the_test_predictions(tmp_path)


@pytest.mark.parametrize('head', ['parallel', 'autoregressive'])
def test_item_level_sid_model_trains_on_windows_and_ranks_existing_items(tmp_path, head):
  """The item-level Semantic-ID model: one position per history item, every
  position of a user window trained at once; the parallel head ranks the
  catalog exactly, the autoregressive head decodes valid IDs; infer from its
  checkpoint gives the run's own predictions."""
  model_cls = {'parallel': models.ItemSidModel,
               'autoregressive': models.ItemSidAutoregressiveModel}[head]
  cfg = model_cls.CONFIG(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_layers=1,
                         dropout_rate=0.1, item_id_buckets=32)
  scheme = ProductQuantizationIds(num_levels=4, codebook_size=8, opq_iters=1)
  results = _run(tmp_path, num_train_steps=150, eval_every_steps=150,
                 checkpoint_every_steps=150, id_scheme=scheme, model=model_cls(cfg))
  assert results['training_examples'] == 'sequence'
  assert results['num_train_examples'] < 300  # packed windows, not prefixes
  assert results['model'] == f'item_sid ({head} head)'
  for split in ('validation', 'test'):
    assert results[split]['invalid_rate'] == 0
    assert results[split]['recall@10'] > 1.5 * results[f'popularity_{split}']['recall@10']
  assert ('test_unconstrained' in results) == (head == 'autoregressive')
  got = _infer_gives_the_test_predictions(tmp_path)
  assert all(len(set(g['items'])) == len(g['items']) == 10 for g in got)


def test_packed_prefix_examples_train_and_decode_valid_ids(tmp_path):
  """pack_examples: the encoder-decoder's prefixes several to a row, a batch
  of about batch_size examples in fewer rows."""
  results = _run(tmp_path, num_train_steps=150, eval_every_steps=150,
                 checkpoint_every_steps=150, id_scheme=RandomCodeIds(num_levels=2),
                 pack_examples=True)
  packed = results['packed']
  assert packed['rows'] < packed['examples'] == results['num_train_examples']
  assert packed['rows_per_batch'] < 32
  for split in ('validation', 'test'):
    assert results[split]['invalid_rate'] == 0
    assert results[split]['recall@10'] > results[f'popularity_{split}']['recall@10']
  with pytest.raises(ValueError, match='pack_examples packs the prefix examples'):
    _run(tmp_path / 'd', num_train_steps=1, pack_examples=True, model=DECODER_ONLY)


def test_sasrec_refuses_multi_level_ids(tmp_path):
  with pytest.raises(ValueError, match='SASRec embeds item ids'):
    _run(tmp_path, num_train_steps=1, id_scheme=RandomCodeIds(num_levels=2), model=SASREC)


def test_bad_config_values_fail_before_any_data_is_loaded(tmp_path, monkeypatch):
  def no_data(*a, **k):
    raise AssertionError('data was loaded before the config was checked')
  monkeypatch.setattr(sequences, 'load_dataset', no_data)
  with pytest.raises(ValueError, match=r"train.num_train_steps = 'abc' \(str\) is not a int"):
    train.train(str(tmp_path), dataset='beauty', num_train_steps='abc')
  with pytest.raises(ValueError, match='batch_size = 2.5'):
    train.train(str(tmp_path), dataset='beauty', batch_size=2.5)
  with pytest.raises(ValueError, match='EncoderDecoderConfig.d_model'):
    models.EncoderDecoderConfig(d_model='64')
  with pytest.raises(ValueError, match='dropout_rate must be in'):
    models.SASRecConfig(dropout_rate=1.5)


def test_early_stopping_ends_the_run_and_a_stopped_run_is_finished(tmp_path):
  """At learning rate 0 validation never improves on its first evaluation:
  with a patience of 2 evaluations the run stops at the third, and running it
  again trains no further."""
  kw = dict(num_train_steps=100, eval_every_steps=5, checkpoint_every_steps=50,
            model=SASREC, early_stopping_evals=2, report_unconstrained=False,
            optimizer_fn=lambda n: trainer.make_optimizer(n, learning_rate=0.0))
  results = _run(tmp_path, **kw)
  assert (results['last_step'], results['stopped_early']) == (15, True)
  history = [json.loads(line) for line in open(tmp_path / 'eval_history.jsonl')]
  assert [h['step'] for h in history] == [5, 10, 15]
  assert len({h['validation/ndcg@10'] for h in history}) == 1  # nothing was learned
  assert 0 < history[0]['train_seconds'] <= history[1]['train_seconds'] <= results['train_seconds']
  assert history[1]['epoch'] == pytest.approx(2 * history[0]['epoch'])
  assert loop.evals_since_best(str(tmp_path / 'eval_history.jsonl'), 10) == 1
  again = _run(tmp_path, **kw)
  assert again == json.loads(json.dumps(results))
  assert len(open(tmp_path / 'eval_history.jsonl').readlines()) == 3


def test_several_steps_per_call_are_the_same_steps(tmp_path):
  """steps_per_call = 4 scans four steps in one jitted call: the same losses
  (dropout keys fold in each step's count) as one step per call."""
  common = dict(num_train_steps=8, eval_every_steps=8, checkpoint_every_steps=8,
                log_every_steps=4, model=SASREC)
  one = _run(tmp_path / 'one', **common)
  four = _run(tmp_path / 'four', steps_per_call=4, **common)
  a, b = _losses(tmp_path / 'one'), _losses(tmp_path / 'four')
  assert sorted(a) == sorted(b) == [4, 8]
  np.testing.assert_allclose([b[4], b[8]], [a[4], a[8]], rtol=1e-5)
  assert four['test']['ndcg@10'] == pytest.approx(one['test']['ndcg@10'], abs=1e-6)
  with pytest.raises(ValueError, match=r"steps_per_call = 3 .*'log_every_steps': 4"):
    _run(tmp_path / 'bad', steps_per_call=3, **{**common, 'num_train_steps': 9,
                                                'eval_every_steps': 9, 'checkpoint_every_steps': 9})
