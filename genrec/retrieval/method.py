"""A generative retrieval method behind one interface (DSI's docids,
`genrec.retrieval.dsi`; SEAL's n-grams, `genrec.retrieval.seal_method`).

A `GenerativeMethod` is the configuration (gin binds it; its `name` is what
tables, run folders and commands call it). `index(tc, ...)` fits it to one
collection: the `Index` holds the identifiers and what constrains decoding to
them, and supplies what training and evaluation need of the method (its
examples, its share of the vocabulary, its warm start, its search and its
serving files), so that `docgen.train_and_evaluate` runs every method alike.
"""

import abc
import dataclasses
from typing import Any

import numpy as np

from genrec import models
from genrec.retrieval import corpus


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained retrieval model to search with.

  Attributes:
    pred: a `trainer.Trainer` or `predictor.Predictor` (its `predict` and
      `predict_host_constrained`).
    params: its parameters.
    mesh: the mesh the search runs on.
    batch_size: queries per search batch.
  """
  pred: Any
  params: Any
  mesh: Any
  batch_size: int


# (ranked document ids per query, their scores, figures for the results row)
Retrieved = tuple[dict[str, list[str]], dict[str, list[float]], dict]


class Index(abc.ABC):
  """A method fitted to one collection (`GenerativeMethod.index`)."""

  tc: corpus.TokenizedCollection

  @property
  @abc.abstractmethod
  def vocab_used(self) -> int:
    """Tokens of the model's vocabulary used: the text's and the identifiers'."""

  @abc.abstractmethod
  def examples(self, split: str, input_len: int, seed: int,
               pseudo: list[list[np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """The training arrays: the collection indexed, the `split` queries, and
    the documents' `pseudo` queries."""

  def init_label(self) -> str:
    """What `warm_start` sets beyond the encoder checkpoint, for the row's
    'init' (e.g. ' (+ docid embeddings)'); '' for nothing."""
    return ''

  def warm_start(self, params: dict) -> dict:
    """`params` (a pure dict of host arrays, the encoder's already from its
    checkpoint) with the method's token rows set from pretrained content."""
    return params

  @abc.abstractmethod
  def save_serving_inputs(self, workdir: str, config: models.ModelConfig,
                          input_len: int, extra: dict | None = None) -> None:
    """Writes the run folder's serving inputs (`run_folder`); `extra` entries
    of retrieval_run.json override the method's own."""

  @abc.abstractmethod
  def retrieve(self, model: Model, qids: list[str], inputs: np.ndarray,
               workdir: str | None = None, tag: str | None = None) -> Retrieved:
    """The ranked documents of the padded queries `inputs` [q, input_len]
    (ids `qids`), best first; with `tag`, the method's own files of the search
    (e.g. SEAL's decoded n-grams) go into `workdir` under that tag."""


class GenerativeMethod(abc.ABC):
  """A generative retrieval method's configuration.

  Subclasses are frozen dataclasses with at least `name` (the method's name
  in METHODS, tables and run folders) and `beam_size` (of the search).
  """

  name: str
  beam_size: int

  def check(self, pretrained: bool) -> None:
    """Refuses, before anything is trained, settings that the model cannot
    run (`pretrained`: the model's encoder is a pretrained checkpoint's,
    `models.Model.pretrained_encoder`)."""
    del pretrained

  @abc.abstractmethod
  def index(self, tc: corpus.TokenizedCollection, *, pretrained: bool,
            model_dir: str | None, cache_dir: str | None, fm=None) -> Index:
    """The method fitted to `tc`. `model_dir`: the pretrained encoder's
    checkpoint (None: MiniLM); `cache_dir`: where embeddings are cached; `fm`:
    an FM-index of `tc.doc_tokens` already built, if any."""

  @abc.abstractmethod
  def tasks_repr(self) -> str:
    """The training tasks' settings, as the run settings record them."""

  @property
  @abc.abstractmethod
  def plain_identifiers(self) -> str:
    """The method's kind of identifiers ('atomic docid', 'semantic docid',
    'n-grams'): what its rows have in common."""

  @property
  @abc.abstractmethod
  def base_identifiers(self) -> str:
    """The identifiers without the settings that rows from before the
    'identifiers' column did not record (DSI's title prefix, SEAL's n-gram
    length): how such a row is read."""

  @property
  @abc.abstractmethod
  def identifiers(self) -> str:
    """What the identifiers are, for the results row ('atomic docid',
    'semantic docid, residual k-means 2 x 128', 'n-grams (10 tokens)')."""

  @abc.abstractmethod
  def for_run(self, run: dict) -> 'GenerativeMethod':
    """This method as a run folder's retrieval_run.json describes it."""

  def check_replay(self, replay_steps: int) -> None:
    """Refuses a replay training (`add_documents`) that the method does not need."""
    del replay_steps

  @abc.abstractmethod
  def grow(self, retriever: str, run: dict, old: corpus.Collection, new: corpus.Collection,
           both: corpus.Collection, sp, params: dict, config: models.ModelConfig, *,
           cache_dir: str | None, atomic_rows: str) -> 'Grown':
    """The trained method of the run folder `retriever` (its retrieval_run.json
    `run`, parameters `params`, query tokenizer `sp`) with the documents `new`
    added after `old`'s (`both`), without training (`add_documents`;
    `atomic_rows` as it says)."""


def random_spans(tokens: np.ndarray, length: int, num: int, rng: np.random.Generator
                 ) -> list[np.ndarray]:
  """`num` random windows of `length` tokens ([tokens] when it is that short)."""
  if len(tokens) <= length:
    return [tokens] * min(num, 1)
  starts = rng.integers(0, len(tokens) - length + 1, num)
  return [tokens[s:s + length] for s in starts]


def settings_repr(tasks, later_fields: tuple[str, ...] = ()) -> str:
  """The dataclass repr of `tasks` without the `later_fields` (added after
  runs were recorded) that hold their default, so those run folders resume."""
  shown = [f for f in dataclasses.fields(tasks)
           if not (f.name in later_fields and getattr(tasks, f.name) == f.default)]
  return (f'{type(tasks).__name__}('
          + ', '.join(f'{f.name}={getattr(tasks, f.name)!r}' for f in shown) + ')')


@dataclasses.dataclass
class Grown:
  """A trained method with documents added without retraining
  (`GenerativeMethod.grow`).

  Attributes:
    index: the method over the old and new documents.
    params: the model's parameters for it (a pure dict of host arrays).
    config: its model config (a vocabulary grown by new identifier tokens).
    timings: seconds of each part, for the row ('encode_s', 'update_s', ...).
    row: the method's figures for the row.
  """
  index: Index
  params: dict
  config: models.ModelConfig
  timings: dict[str, float]
  row: dict
