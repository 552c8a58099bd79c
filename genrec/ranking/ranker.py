"""A ranking model whose item embeddings come from hashed item keys
(`genrec.ranking.sid_features`): random item-id hashing vs Semantic-ID n-grams and
SentencePiece sub-pieces, under one embedding-table budget.

Model (DIN-style): every item (history and candidate) is the pooled rows of
its keys; the history is pooled by attention to the candidate (softmax of
scaled dot products over valid positions) and by its mean; an MLP over
[attended history, candidate, their product, mean history] gives the logit
of P(engage | history, candidate).

Data: the leave-one-out sequences of an Amazon set. A `cold_fraction` of the
items is removed from training altogether (as history and as target): the
new items. Training examples are every prefix of the remaining training
sequences, the next item as the positive and `num_negatives` items drawn
uniformly from the warm items as negatives (sigmoid cross-entropy). Test:
each user's last item against `eval_negatives` items drawn uniformly from
the whole catalog; AUC and log loss pooled over the candidates of a slice of
users (all; cold = the target is a new item; head / tail = the target's
training frequency, `metrics.popularity_slices`), and Recall@10 of the
target among its candidates.
"""

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import optax
import scipy.stats

from genrec import config_check, loop, metrics, models, partitioning, trainer
from genrec.data import sequences
from genrec.ranking import sid_features
from genrec.ids import IdScheme, ResidualKMeansIds


FEATURES = 'item_features.npz'  # a run's item rows/mask (sid_features.ItemFeatures)
ITEM_KEYS = 'item_keys.txt'  # line i: the external id of item i, when the data has them


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RankerConfig:
  dim: int = 32
  mlp_dims: tuple[int, ...] = (128, 64)
  pooling: str = 'sum'  # of an item's key rows: 'sum' or 'mean'
  # Embedding-table rows: `train_and_evaluate` sets them from its table_rows.
  table_rows: int = 0

  @classmethod
  def from_json(cls, fields: dict) -> 'RankerConfig':
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _dense(n_in: int, n_out: int, axes, rngs: nnx.Rngs) -> nnx.Linear:
  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), axes)
  return nnx.Linear(n_in, n_out, kernel_init=init,
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
                    rngs=rngs)


class Ranker(nnx.Module):

  def __init__(self, cfg: RankerConfig, table_rows: int | None = None, *, rngs: nnx.Rngs):
    if cfg.pooling not in ('sum', 'mean'):
      raise ValueError(f"RankerConfig.pooling must be 'sum' or 'mean', not {cfg.pooling!r}.")
    table_rows = cfg.table_rows if table_rows is None else table_rows
    self.cfg = cfg
    init = nnx.with_partitioning(nnx.initializers.normal(0.05), ('table_rows', 'embed'))
    self.table = nnx.Param(init(rngs.params(), (table_rows, cfg.dim), jnp.float32))
    dims = (4 * cfg.dim,) + tuple(cfg.mlp_dims)
    self.mlp = nnx.List([_dense(a, b, ('embed', 'mlp') if i == 0 else (None, 'mlp'), rngs)
                         for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
    self.out = _dense(dims[-1], 1, ('mlp', None), rngs)

  def embed(self, items: jax.Array, rows: jax.Array, mask: jax.Array) -> jax.Array:
    """[...] item ids -> [..., dim]: the pooled table rows of their keys."""
    r, m = rows[items], mask[items].astype(jnp.float32)  # [..., K]
    e = (self.table[...][r] * m[..., None]).sum(-2)
    if self.cfg.pooling == 'mean':
      e = e / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    return e

  def __call__(self, history: jax.Array, candidates: jax.Array, rows: jax.Array,
               mask: jax.Array) -> jax.Array:
    """history int [b, H] (0 = padding), candidates int [b, C] -> logits [b, C]."""
    h = self.embed(history, rows, mask)  # [b, H, d]
    c = self.embed(candidates, rows, mask)  # [b, C, d]
    valid = history > 0
    att = jnp.einsum('bcd,bhd->bch', c, h) / np.sqrt(self.cfg.dim)
    att = jnp.where(valid[:, None, :], att, -1e9)
    w = jax.nn.softmax(att, -1) * valid.any(-1)[:, None, None]
    u = jnp.einsum('bch,bhd->bcd', w, h)
    mean = (h * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1, keepdims=True), 1)
    x = jnp.concatenate([u, c, u * c, jnp.broadcast_to(mean[:, None], c.shape)], -1)
    for layer in self.mlp:
      x = jax.nn.relu(layer(x))
    return self.out(x)[..., 0]

  def loss(self, batch: dict[str, jax.Array], *, deterministic: bool = False,
           rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict]:
    """Sigmoid cross-entropy of 'labels' [b, C] for 'candidates' [b, C] after
    'history' [b, H]; the item features 'rows' and 'mask' come with every
    batch (`trainer.Trainer` constants)."""
    del deterministic, rngs  # no dropout
    logits = self(batch['history'], batch['candidates'], batch['rows'], batch['mask'])
    return optax.sigmoid_binary_cross_entropy(logits, batch['labels']).mean(), {}


class RankerModel(models.Model):
  """The ranker as `trainer.Trainer` and `predictor.Predictor` build it from
  its config (`models.abstract_model`); its data are this module's own."""
  CONFIG = RankerConfig
  MODULE = Ranker


def constant_adam(num_train_steps: int, learning_rate: float = 2e-3):
  """The ranker's default optimizer: Adam at a constant rate, as
  `trainer.make_optimizer` builds it (AdamW without weight decay, warmup or
  clipping, whose updates are optax.adam(learning_rate)'s)."""
  return trainer.make_optimizer(num_train_steps, 'adamw', learning_rate, schedule='constant',
                                warmup_steps=0, weight_decay=0.0, clip_norm=None)


def abstract_ranker(cfg: RankerConfig, table_rows: int) -> Ranker:
  """The model with ShapeDtypeStructs instead of arrays (no memory, no compute)."""
  return models.abstract_model(dataclasses.replace(cfg, table_rows=table_rows))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class RankingData:
  data: sequences.SequenceData
  cold: np.ndarray  # bool [num_items + 1]: new items, never in training
  train_history: np.ndarray  # int32 [n, H]
  train_target: np.ndarray  # int32 [n]
  test_history: np.ndarray  # int32 [users, H]
  test_target: np.ndarray  # int32 [users]
  train_counts: np.ndarray  # int64 [num_items + 1] occurrences in the training data
  target_counts: np.ndarray  # int64 [num_items + 1] occurrences as a training target


def split_cold_start(data: sequences.SequenceData, cold_fraction: float, max_history: int,
                     seed: int) -> RankingData:
  """Removes a random `cold_fraction` of the items from training (see module doc)."""
  if not 0 <= cold_fraction < 1:
    raise ValueError(f'cold_fraction must be in [0, 1), got {cold_fraction}.')
  rng = np.random.default_rng([seed, 7])
  n = data.num_items
  cold = np.zeros(n + 1, bool)
  cold[1 + rng.choice(n, int(round(cold_fraction * n)), replace=False)] = True
  hist, tgt = [], []
  train_counts = np.zeros(n + 1, np.int64)
  target_counts = np.zeros(n + 1, np.int64)
  for s in data.sequences:
    part = s[:-2][~cold[s[:-2]]]
    np.add.at(train_counts, part, 1)
    for t in range(1, len(part)):
      hist.append(part[max(0, t - max_history):t])
      tgt.append(int(part[t]))
    np.add.at(target_counts, part[1:], 1)
  test = sequences.leave_one_out(data, max_history)['test']
  train = sequences.pack_split(hist, tgt, max_history)
  return RankingData(data, cold, train.history, train.target, test.history, test.target,
                     train_counts, target_counts)


def eval_candidates(targets: np.ndarray, num_items: int, num_negatives: int, seed: int,
                    exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
  """int32 [n, 1 + num_negatives]: the target first, then `num_negatives`
  distinct negatives drawn uniformly from the catalog without the target and
  without `exclude[i]` (the user's own items, as the S3-Rec-style sampler).

  Raises:
    ValueError: when a user has fewer candidate negatives than asked for.
  """
  rng = np.random.default_rng([seed, 11])
  targets = np.asarray(targets)
  out = np.zeros((len(targets), 1 + num_negatives), np.int32)
  out[:, 0] = targets
  for i, t in enumerate(targets):
    banned = np.zeros(num_items + 1, bool)
    banned[0] = banned[t] = True
    if exclude is not None:
      banned[exclude[i]] = True
    free = num_items + 1 - int(banned.sum())
    if free < num_negatives:
      raise ValueError(f'User {i} has {free} items to draw {num_negatives} negatives from; '
                       'lower eval_negatives.')
    if free < 4 * num_negatives:  # dense: choose among the allowed items directly
      neg = rng.choice(np.flatnonzero(~banned), num_negatives, replace=False)
    else:  # sparse exclusions: rejection sampling, order of first draw kept
      neg = np.zeros(0, np.int64)
      while len(neg) < num_negatives:
        draw = rng.integers(1, num_items + 1, 2 * num_negatives)
        draw = draw[~banned[draw]]
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)]
        draw = draw[~np.isin(draw, neg)]
        neg = np.concatenate([neg, draw])[:num_negatives]
    out[i, 1:] = neg
  return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney, ties count one half)."""
  labels = np.asarray(labels, bool)
  pos, neg = labels.sum(), (~labels).sum()
  if not pos or not neg:
    return float('nan')
  ranks = scipy.stats.rankdata(scores)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def slice_metrics(logits: np.ndarray, users: np.ndarray) -> dict[str, float]:
  """AUC, log loss and Recall@10 over `users` rows of candidate logits [n, C]
  (column 0 the positive). Recall@10: the positive among the 10 best, every
  negative with a score >= the positive's counted ahead of it."""
  x = logits[users]
  labels = np.zeros_like(x, bool)
  labels[:, 0] = True
  p = 1 / (1 + np.exp(-x.astype(np.float64)))
  eps = 1e-7
  loss = -np.where(labels, np.log(p + eps), np.log(1 - p + eps)).mean() if len(x) else np.nan
  # Ties count against the positive: a negative scoring the same (e.g. an item
  # sharing its Semantic ID) ranks before it, so a constant model gets
  # Recall@10 = 10 / C, not 1.
  rank = (x[:, 1:] >= x[:, :1]).sum(1)
  return {'auc': auc(labels.ravel(), x.ravel()), 'logloss': float(loss),
          'recall@10': float((rank < 10).mean()) if len(x) else float('nan'),
          'users': int(len(x))}


# ---------------------------------------------------------------------------
# Train and evaluate
# ---------------------------------------------------------------------------
def _train_batch(rd: RankingData, batcher: loop.EpochBatcher, warm: np.ndarray, step: int,
                 batch_size: int, num_negatives: int, seed: int, mesh) -> dict:
  """Step `step`'s batch, sharded: the next item positive, `num_negatives`
  warm items drawn uniformly (seeded by the step) negative."""
  idx = batcher.indices(step)
  rng = np.random.default_rng([seed, 3, step])
  neg = warm[rng.integers(0, len(warm), (batch_size, num_negatives))]
  cands = np.concatenate([rd.train_target[idx][:, None], neg], 1)
  labels = np.zeros(cands.shape, np.float32)
  labels[:, 0] = 1
  batch = {'history': rd.train_history[idx], 'candidates': cands, 'labels': labels}
  return partitioning.shard_batch(
      {k: v[partitioning.host_slice(batch_size, mesh)] for k, v in batch.items()}, mesh)


@gin.configurable(denylist=['workdir'])
def train_and_evaluate(
    variant: str = 'spm_sid',
    table_rows: int = 4000,
    workdir: str = 'runs/ranking',
    dataset: str | sequences.SequenceData = 'beauty',
    data_dir: str | None = None,
    sid_scheme: IdScheme = ResidualKMeansIds(num_levels=3, codebook_size=256, dedup=False),
    config: RankerConfig | None = None,
    mesh_fn: Callable = partitioning.make_mesh,
    cold_fraction: float = 0.1,
    max_history: int = 20,
    num_negatives: int = 4,
    eval_negatives: int = 99,
    num_train_steps: int = 2000,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    optimizer_fn: Callable = constant_adam,
    eval_batch_size: int = 2048,
    slice_fractions: tuple[float, float] = (0.2, 0.5),
    spm_vocab_size: int | None = None,
    log_every_steps: int = 200,
    seed: int = 0,
    data_cache: dict | None = None,
) -> dict:
  """Trains the ranker with one item representation and evaluates it.

  Args:
    variant: `sid_features.VARIANTS` (gin: `ranking.train_and_evaluate.variant`).
    table_rows: embedding-table rows (the same budget for every variant).
    workdir: run folder (checkpoint, SentencePiece model, results).
    dataset, data_dir: an Amazon set (or SequenceData) and the data dir.
    sid_scheme: the Semantic IDs (fitted on every item's content, new ones too).
    config: the model (default `RankerConfig()` built at call time, so gin
      bindings of RankerConfig apply).
    cold_fraction: items held out of training (new items).
    learning_rate: the rate given to `optimizer_fn`.
    optimizer_fn: (num_train_steps, learning_rate=...) -> (optax optimizer,
      learning-rate schedule), e.g. `@trainer.make_optimizer` with its own
      gin bindings (default: `constant_adam`).
    spm_vocab_size: spm_sid's SentencePiece vocabulary bound (default: table_rows).
    data_cache: dict reused across calls for the loaded data, split and IDs.

  Returns:
    A table row: metrics per slice ('all', 'cold', 'head', 'tail'), budget, timings.
  """
  config_check.check_arguments(train_and_evaluate, dict(locals()))
  config = config or RankerConfig()
  loop.make_workdir(workdir)
  cache = data_cache if data_cache is not None else {}
  key = (dataset if isinstance(dataset, str) else dataset.name, cold_fraction, max_history,
         seed)
  if key not in cache:
    data = (dataset if isinstance(dataset, sequences.SequenceData)
            else sequences.load_dataset(dataset, data_dir))
    cache[key] = split_cold_start(data, cold_fraction, max_history, seed)
  rd = cache[key]
  data = rd.data
  codes = sizes = None
  if variant != 'random':
    sid_key = (key, sid_scheme)
    if sid_key not in cache:
      cache[sid_key] = sid_scheme.fit(data)
    ids = cache[sid_key]
    codes, sizes = ids.codes, ids.level_sizes
  t0 = time.time()
  feats = sid_features.item_features(variant, table_rows, data.num_items, codes, sizes,
                                     rd.train_counts, workdir, spm_vocab_size)
  features_s = time.time() - t0
  if jax.process_index() == 0:  # what export needs besides the checkpoint
    np.savez(os.path.join(workdir, FEATURES), rows=feats.rows, mask=feats.mask)
    if data.item_keys:
      sequences.write_external_ids(os.path.join(workdir, ITEM_KEYS), data.item_keys[1:])

  mesh = mesh_fn()
  dp = partitioning.data_parallel_size(mesh) * jax.process_count()
  if batch_size % dp:
    raise ValueError(f'batch_size {batch_size} must be divisible by the data-parallel size '
                     f'{dp}.')
  tx, lr_fn = optimizer_fn(num_train_steps, learning_rate=learning_rate)
  tr = trainer.Trainer(dataclasses.replace(config, table_rows=table_rows), tx, mesh, lr_fn,
                       constants={'rows': feats.rows, 'mask': feats.mask})
  warm = np.flatnonzero(~rd.cold[1:]) + 1
  batcher = loop.EpochBatcher(len(rd.train_target), batch_size, seed)
  rng = jax.random.key(seed + 1)  # dropout keys (the ranker has none)

  def step_fn(state, step):
    batch = _train_batch(rd, batcher, warm, step, batch_size, num_negatives, seed, mesh)
    state, out = tr.train_step(state, batch, rng)
    return state, out['loss']

  settings = {'variant': variant, 'table_rows': table_rows, 'dataset': data.name,
              'config': dataclasses.asdict(config), 'sid_scheme': sid_scheme.name,
              'batch_size': batch_size, 'learning_rate': learning_rate,
              'optimizer': loop.callable_settings(optimizer_fn),
              'num_negatives': num_negatives, 'cold_fraction': cold_fraction,
              'max_history': max_history, 'seed': seed, 'spm_vocab_size': spm_vocab_size}
  state, train_s, loss = loop.train_fixed_budget(
      workdir, f'{variant}/{table_rows}', num_train_steps, batcher, tr.abstract_state,
      lambda: tr.init_state(seed), step_fn, log_every_steps, settings)
  params = state.params
  graphdef = tr.graphdef
  predict_j = jax.jit(lambda params, history, candidates, rows, mask: nnx.merge(
      graphdef, params)(history, candidates, rows, mask))
  rows, mask = tr.train_step.constants['rows'], tr.train_step.constants['mask']

  t0 = time.time()
  cands = eval_candidates(rd.test_target, data.num_items, eval_negatives, seed,
                          exclude=data.sequences)
  logits = np.concatenate(partitioning.map_batches(
      {'h': rd.test_history, 'c': cands}, eval_batch_size, mesh,
      lambda b, n: partitioning.gather(predict_j(params, b['h'], b['c'], rows, mask), n)))
  eval_s = time.time() - t0
  pop = metrics.popularity_slices(rd.target_counts, *slice_fractions)[rd.test_target]
  users = {'all': np.arange(len(cands)), 'cold': np.flatnonzero(rd.cold[rd.test_target]),
           'head': np.flatnonzero(pop == metrics.SLICES.index('head')),
           'tail': np.flatnonzero(pop == metrics.SLICES.index('tail'))}
  row = {'dataset': data.name, 'variant': variant, 'table_rows': table_rows,
         'params': int(sum(x.size for x in jax.tree.leaves(params))),
         'train': f'{num_train_steps} x {batch_size} x (1 + {num_negatives})',
         'train_s': None if train_s is None else round(train_s, 1),
         'eval_s': round(eval_s, 1), 'features_s': round(features_s, 1),
         'final_loss': None if loss is None else round(loss, 4),
         'device': partitioning.device_summary(), **feats.info}
  for name, u in users.items():
    for k, v in slice_metrics(logits, u).items():
      row[f'{name}/{k}'] = round(v, 4) if isinstance(v, float) else v
  logging.info('%s', row)
  return row
