"""Adding a model is one class and one gin file: a toy model defined here,
bound by gin, trains and evaluates through main.py with no change to genrec;
run records written before the model classes still load."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import optax

from conftest import FAST_COMPILE, REPO_ROOT
from genrec import layers, models


@dataclasses.dataclass(frozen=True)
class BagOfItemsConfig(models.ConfigBase):
  """Sizes of the toy model; `num_items` is filled in from the data."""
  d_model: int = 16
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  num_items: int = 0
  POSITIVE = ('d_model',)
  scores_items = True


class BagOfItems(nnx.Module):
  """Scores every item by its dot product with the mean embedding of the
  history's items (no order, no attention)."""

  def __init__(self, cfg: BagOfItemsConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.item_embed = layers._param(rngs, nnx.initializers.normal(0.1),
                                    (cfg.num_items + 1, cfg.d_model), (None, 'embed'))

  def score_items(self, items: jax.Array) -> jax.Array:
    """[b, h] history item ids (0: padding) -> float32 scores [b, items + 1]."""
    table = self.item_embed[...]
    valid = (items > 0)[..., None]
    h = (table[items] * valid).sum(1) / jnp.maximum(valid.sum(1), 1)
    scores = h @ table.T
    return jnp.where(jnp.arange(table.shape[0]) > 0, scores, jnp.finfo(jnp.float32).min)

  def loss(self, batch, *, deterministic=False, rngs=None):
    scores = self.score_items(batch['encoder_input_tokens'])
    ce = optax.softmax_cross_entropy_with_integer_labels(scores, batch['target_item'])
    accuracy = (scores.argmax(-1) == batch['target_item']).astype(jnp.float32).mean()
    return ce.mean(), {'accuracy': accuracy}


class BagOfItemsModel(models.Model):
  """The toy as gin binds it: trained on history prefixes, inputs mapped from
  atomic identifier tokens back to item ids."""
  CONFIG = BagOfItemsConfig
  MODULE = BagOfItems
  score_kind = 'item logits'

  @property
  def name(self) -> str:
    return 'bag_of_items'

  def model_inputs(self, arrays, ids):
    item_of_token = np.zeros(ids.vocab_size, np.int32)
    item_of_token[ids.token_table()[1:, 0]] = np.arange(1, ids.num_items + 1)
    target = (arrays['target_item'] if 'target_item' in arrays else
              ids.tokens_to_items(arrays['decoder_target_tokens'][:, :1]))
    return {'encoder_input_tokens': item_of_token[arrays['encoder_input_tokens']],
            'target_item': target.astype(np.int32)}

  def serving_inputs(self, history, token_table):
    return history


TOY_GIN = """
from __gin__ import dynamic_registration
import models_registry_test as toy

MODEL = @toy.BagOfItemsModel()
toy.BagOfItemsModel.config = @toy.BagOfItemsConfig()
toy.BagOfItemsConfig.d_model = 24
"""


def test_a_model_defined_outside_genrec_trains_and_evaluates_through_main(tmp_path):
  (tmp_path / 'toy.gin').write_text(TOY_GIN)
  run = tmp_path / 'run'
  env = {**os.environ, 'XLA_FLAGS': FAST_COMPILE,
         'PYTHONPATH': os.pathsep.join([os.path.dirname(__file__), REPO_ROOT])}
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'main.py'), '--gin_file=gin/runs/quickstart.gin',
       f'--gin_file={tmp_path / "toy.gin"}', f'--workdir={run}',
       '--gin_bindings=train.train.num_train_steps=100',
       '--gin_bindings=train.train.eval_every_steps=50',
       '--gin_bindings=sequences.make_synthetic.num_users=300',
       '--gin_bindings=sequences.make_synthetic.num_items=80',
       "--gin_bindings=train.train.input_pipeline='numpy'"],
      cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  results = json.loads((run / 'results.json').read_text())
  assert results['model'] == 'bag_of_items' and results['training_examples'] == 'prefix'
  assert results['params'] == 81 * 24  # its own config, num_items filled in from the data
  run_config = json.loads((run / 'run_config.json').read_text())
  assert run_config['model_class'] == 'BagOfItemsConfig' and run_config['item_scoring']
  assert results['test']['invalid_rate'] == 0  # items ranked directly, every one real
  # It learned the synthetic catalog's structure, which popularity cannot.
  assert results['test']['recall@10'] > results['popularity_test']['recall@10']
  # Its record loads back into its own class.
  config = models.config_from_json(run_config['model_config'], run_config['model_class'])
  assert isinstance(models.model_for(config), BagOfItemsModel)


OLD_TIGER = dict(vocab_size=1030, d_model=128, num_heads=6, head_dim=64, d_ff=1024,
                 num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.1,
                 activation='relu', gated_mlp=False, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, logits_via_embedding=False,
                 dtype='float32', architecture='encoder_decoder', num_items=0, max_len=0,
                 positions_from_end=False, encoder_checkpoint='')


ENCODER_DECODER = {'embed', 'encoder_bias', 'decoder_bias', 'encoder_layers', 'decoder_layers',
                   'encoder_norm', 'decoder_norm', 'logits_dense'}
TOP_LEVEL_PARAMS = {'encoder_decoder': ENCODER_DECODER,
                    'projection': ENCODER_DECODER | {'item_embed'},
                    'decoder_only': {'embed', 'bias', 'blocks', 'norm', 'logits_dense'},
                    'sasrec': {'item_embed', 'pos_embed', 'blocks', 'norm'}}


def test_old_run_records_load_as_the_new_model_classes():
  """run_config.json files written with TransformerConfig (architecture
  strings) map to the new config classes, whose modules have the parameter
  tree the old ones had (checked against the old code when the classes were
  introduced), so their checkpoints restore."""
  cases = {
      'encoder_decoder': (OLD_TIGER, models.EncoderDecoderConfig, 'encoder_decoder'),
      'projection': ({**OLD_TIGER, 'num_items': 1000, 'max_len': 20}, models.ProjectionConfig,
                     'encoder_decoder + projection head'),
      'decoder_only': ({**OLD_TIGER, 'architecture': 'decoder_only'}, models.DecoderOnlyConfig,
                       'decoder_only'),
      'sasrec': ({**OLD_TIGER, 'architecture': 'sasrec', 'num_decoder_layers': 0,
                  'num_encoder_layers': 2, 'num_items': 1000, 'max_len': 50,
                  'positions_from_end': True}, models.SASRecConfig, 'sasrec'),
  }
  for name, (fields, cls, model_name) in cases.items():
    config = models.config_from_json(fields, 'TransformerConfig')
    assert type(config) is cls, name
    assert models.model_for(config).name == model_name
    want = {'decoder_only': 8, 'sasrec': 2}.get(name)
    if want:
      assert config.num_layers == want
    tree = nnx.to_pure_dict(nnx.state(models.abstract_model(config)))
    assert set(tree) == TOP_LEVEL_PARAMS[name], name
  projection = models.config_from_json({**OLD_TIGER, 'num_items': 1000})
  assert nnx.state(models.abstract_model(projection))['item_embed'].shape == (1024, 128)


# An ItemSidConfig as run_config.json recorded it while the one class held
# both heads, chosen by its `head` field.
OLD_ITEM_SID = {
    'd_model': 32, 'num_heads': 2, 'head_dim': 16, 'd_ff': 64, 'num_layers': 1,
    'dropout_rate': 0.5, 'activation': 'gelu', 'gated_mlp': False, 'head': 'parallel',
    'head_layers': 2, 'item_id_buckets': 0, 'temperature': 0.0, 'loss': 'codes',
    'dtype': 'float32', 'vocab_size': 40, 'level_sizes': [8, 8], 'num_items': 30,
    'max_len': 20}


def test_old_item_sid_records_load_as_the_model_class_of_their_head():
  """`head` named the item-level model's head; now its config class does."""
  cases = {'parallel': (models.ItemSidConfig, models.ItemSidParallel, 'level_proj'),
           'autoregressive': (models.ItemSidAutoregressiveConfig,
                              models.ItemSidAutoregressive, 'head_blocks')}
  for head, (cls, module, param) in cases.items():
    config = models.config_from_json({**OLD_ITEM_SID, 'head': head}, 'ItemSidConfig')
    assert type(config) is cls, head
    assert models.model_for(config).name == f'item_sid ({head} head)'
    assert models.model_class(config) is module
    assert config.level_sizes == (8, 8) and config.d_model == 32
    assert param in nnx.to_pure_dict(nnx.state(models.abstract_model(config)))
  assert models.config_from_json({**OLD_ITEM_SID, 'head': 'autoregressive'},
                                 'ItemSidConfig').head_layers == 2
  # A record of today (no `head`) loads as it is.
  new = models.config_from_json(json.loads(json.dumps(dataclasses.asdict(
      models.ItemSidAutoregressiveConfig(d_model=32)))), 'ItemSidAutoregressiveConfig')
  assert new == models.ItemSidAutoregressiveConfig(d_model=32)


def test_old_item_sid_settings_read_as_what_the_model_classes_record():
  """run_settings.json of an item-level run recorded `model_config.head` and
  the other head's fields: `legacy_settings` gives what the run records now,
  so the run resumes as no change of settings."""
  for head, cls in (('parallel', models.ItemSidConfig),
                    ('autoregressive', models.ItemSidAutoregressiveConfig)):
    old = {**{f'model_config.{k}': v for k, v in OLD_ITEM_SID.items()},
           'model_config.head': head, 'model': f'item_sid ({head} head)', 'batch_size': 32}
    config = cls.from_json({k: v for k, v in OLD_ITEM_SID.items() if k in {
        f.name for f in dataclasses.fields(cls)}})
    now = {'model': models.model_for(config).name, 'batch_size': 32,
           **{f'model_config.{k}': v for k, v in
              json.loads(json.dumps(dataclasses.asdict(config))).items()}}
    assert models.legacy_settings(old) == now, head
    assert models.legacy_settings(now) == now  # today's records come back as they are
