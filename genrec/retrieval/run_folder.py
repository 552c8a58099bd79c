"""What a generative method's run folder holds besides its checkpoint: the
files that `genrec.retrieval.export`, `add_documents` and the inference run
mode read (the query tokenizer, the document ids, retrieval_run.json, and
the method's identifiers: DSI's ids/ or SEAL's fm_index/)."""

import dataclasses
import os

from genrec import fm_index, loop, models, text_encoder
from genrec.data import sequences
from genrec.ids import ItemIds
from genrec.retrieval import corpus

SERVING_RUN = 'retrieval_run.json'  # what a run's export needs besides the checkpoint
SPM_MODEL = 'spm.model'
WORDPIECE = 'tokenizer.json'  # instead of spm.model, for pretrained-encoder runs
DOC_IDS = 'doc_ids.txt'
FM_INDEX = 'fm_index'


def save_serving_inputs(workdir: str, tc: corpus.TokenizedCollection, method: str,
                        config: models.ModelConfig, input_len: int, beam_size: int, *,
                        ids: ItemIds | None = None, shift: int = 0,
                        fm: fm_index.FMIndex | None = None, extra: dict | None = None) -> None:
  """Writes into a run folder what `genrec.retrieval.export` reads: the
  SentencePiece model, the document ids (line i: document i + 1), the run's
  shapes and settings (retrieval_run.json, with `extra`), and DSI's docids
  (ids/) or SEAL's FM-index (fm_index/)."""
  if ids is not None:
    ids.save(os.path.join(workdir, 'ids'))
  if fm is not None:
    fm.save(os.path.join(workdir, FM_INDEX))
  if isinstance(tc.sp, text_encoder.WordPieceVocabulary):
    with open(os.path.join(workdir, WORDPIECE), 'wb') as f:
      f.write(tc.sp.serialized)
  else:
    with open(os.path.join(workdir, SPM_MODEL), 'wb') as f:
      f.write(tc.sp.serialized_model_proto())
  sequences.write_external_ids(os.path.join(workdir, DOC_IDS), tc.collection.doc_ids)
  loop.write_json(os.path.join(workdir, SERVING_RUN), {
      'method': method, 'collection': tc.collection.name, 'input_len': input_len,
      'docid_token_shift': shift, 'beam_size': beam_size,
      'model_config': dataclasses.asdict(config), 'model_class': type(config).__name__,
      'num_docs': tc.collection.num_docs,
      **(extra or {})})
