"""Test setup: 8 fake CPU devices (set before jax is imported), quiet TF."""

import os
import tempfile

# The tests compile hundreds of tiny programs: XLA's LLVM optimizations take
# seconds of each compile and save milliseconds at these sizes (the suite
# runs about a fifth faster without them). The main.py subprocesses of the
# tests get the same flag (one device: FAST_COMPILE alone).
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count=8 {FAST_COMPILE}').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Text-embedding caches of the tests go to a temporary folder, not ~/.cache.
os.environ.setdefault('GENREC_CACHE_DIR', tempfile.mkdtemp(prefix='genrec-test-cache-'))
# Many tests build the same tiny models again (each Trainer jits anew): a
# persistent compilation cache, shared by the xdist workers and the main.py
# subprocesses of one session, compiles each program once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ['GENREC_CACHE_DIR'], 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# ranx (the reference IR metrics and fusions) compiles its numba kernels on
# first use, about 30 s per xdist worker on 2 cores; on the tests' few queries
# the same functions run as plain Python in milliseconds.
os.environ.setdefault('NUMBA_DISABLE_JIT', '1')

import pytest  # noqa: E402

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], 'GPU')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The modules whose tests take 20-100 s each on 2 cores (main.py subprocesses,
# multi-process jobs, exports), slowest first, run before the rest: the two
# xdist workers then end together on short tests instead of one of them
# finishing a long test alone.
SLOW_MODULES = ('multiprocess_test.py', 'launch_test.py', 'export_test.py', 'docgen_test.py',
                'serve_test.py', 'pseudo_queries_test.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_MODULES)))  # stable


def data_dir_or_skip(*parts: str) -> str:
  """The shared data dir (GENREC_DATA_DIR or ../shared/data), else skip."""
  base = os.environ.get('GENREC_DATA_DIR') or os.path.join(REPO_ROOT, '..', 'shared', 'data')
  path = os.path.join(base, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: set GENREC_DATA_DIR to the folder holding amazon-2014/ '
                '(CI has it at ../shared/data).')
  return base


@pytest.fixture(scope='session')
def tiny_bert_dir(tmp_path_factory) -> str:
  """A sentence-transformers folder with a random 1-layer, 32-wide BERT and
  all-MiniLM-L6-v2's WordPiece tokenizer (the pretrained-encoder tests run
  it instead of the 22M-parameter checkpoint)."""
  text_encoder = pytest.importorskip(
      'genrec.text_encoder', reason='genrec.text_encoder needs tokenizers and safetensors')
  import json
  import shutil

  import numpy as np
  from safetensors.numpy import save_file
  try:
    source = text_encoder.default_model_dir()
  except ImportError as e:
    pytest.skip(str(e))
  folder = tmp_path_factory.mktemp('tiny_bert')
  shutil.copy(os.path.join(source, 'tokenizer.json'), folder / 'tokenizer.json')
  cfg = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
             layer_norm_eps=1e-12, hidden_act='gelu', position_embedding_type='absolute')
  (folder / 'config.json').write_text(json.dumps(cfg))
  rng = np.random.default_rng(0)
  w = lambda *shape: (rng.normal(size=shape) * 0.2).astype(np.float32)
  h, f = 32, 64
  tensors = {'embeddings.word_embeddings.weight': w(30522, h),
             'embeddings.position_embeddings.weight': w(64, h),
             'embeddings.token_type_embeddings.weight': w(2, h),
             'embeddings.LayerNorm.weight': 1 + w(h), 'embeddings.LayerNorm.bias': w(h)}
  p = 'encoder.layer.0.'
  for name, shape in [('attention.self.query', (h, h)), ('attention.self.key', (h, h)),
                      ('attention.self.value', (h, h)), ('attention.output.dense', (h, h)),
                      ('intermediate.dense', (f, h)), ('output.dense', (h, f))]:
    tensors[p + name + '.weight'], tensors[p + name + '.bias'] = w(*shape), w(shape[0])
  for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
    tensors[p + name + '.weight'], tensors[p + name + '.bias'] = 1 + w(h), w(h)
  save_file(tensors, str(folder / 'model.safetensors'))
  return str(folder)


@pytest.fixture(scope='session')
def tc(tmp_path_factory):
  """A toy collection for the retrieval tests, tokenized: 16 documents with
  distinctive titles; query i is doc i's title (train: even i, test: odd i)."""
  import json
  import numpy as np
  import sentencepiece as spm
  from genrec.retrieval import corpus
  root = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  common = [f'word{j}' for j in range(30)]
  docs, queries, lines = [], [], {'train': '', 'test': ''}
  for i in range(16):
    title = f'topic{i} subject{i} matter{i}'
    text = title + ' ' + ' '.join(rng.choice(common, 20))
    docs.append({'_id': str(i + 1), 'title': title, 'text': text})
    queries.append({'_id': f'q{i}', 'text': title})
    lines['train' if i % 2 == 0 else 'test'] += f'q{i}\t{i + 1}\t1\n'
  folder = root / 'toy'
  (folder / 'qrels').mkdir(parents=True)
  (folder / 'corpus.jsonl').write_text('\n'.join(map(json.dumps, docs)) + '\n')
  (folder / 'queries.jsonl').write_text('\n'.join(map(json.dumps, queries)) + '\n')
  for split, body in lines.items():
    (folder / 'qrels' / f'{split}.tsv').write_text('query-id\tcorpus-id\tscore\n' + body)
  c = corpus.load_beir('toy', str(root))
  path = corpus.train_sentencepiece(
      [corpus.document_text(t, x) for t, x in zip(c.titles, c.texts)],
      str(root / 'spm'), vocab_size=120)
  return corpus.TokenizedCollection.build(c, spm.SentencePieceProcessor(model_file=path))


def tiny_encoder_decoder():
  """The retrieval tests' encoder-decoder config: one layer each way, 32 wide."""
  from genrec import models
  return models.EncoderDecoderConfig(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                                     num_encoder_layers=1, num_decoder_layers=1,
                                     dropout_rate=0.0)
