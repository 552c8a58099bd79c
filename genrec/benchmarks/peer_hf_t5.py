"""The PyTorch peer of `train_throughput`: one Hugging Face T5 training step
(forward, backward, AdamW) at the same sizes and shapes as genrec's step.

Runs in its own virtualenv with torch (CPU) and `transformers<5`, never in
genrec's (genrec does not import it):

  python -m venv ../peer-venv && ../peer-venv/bin/pip install torch 'transformers<5'
  ../peer-venv/bin/python genrec/benchmarks/peer_hf_t5.py --batch_size=256 \
      --input_len=81 --target_len=5 --vocab_size=3034

`train_throughput --peer_python=../peer-venv/bin/python` runs it beside
genrec's step in the same run. Prints one JSON line with the median step.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--input_len', type=int, default=81)
  p.add_argument('--target_len', type=int, default=5)
  p.add_argument('--vocab_size', type=int, default=3034)
  p.add_argument('--d_model', type=int, default=128)
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument('--d_ff', type=int, default=1024)
  p.add_argument('--num_heads', type=int, default=6)
  p.add_argument('--num_encoder_layers', type=int, default=4)
  p.add_argument('--num_decoder_layers', type=int, default=4)
  p.add_argument('--dropout_rate', type=float, default=0.1)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--bf16', action='store_true', help='bf16 autocast')
  p.add_argument('--lengths_file', default=None,
                 help='JSON list of input lengths, batch after batch: each batch is '
                 'padded to its longest input (a data collator\'s dynamic padding) '
                 'instead of full input_len rows')
  a = p.parse_args()
  torch.manual_seed(0)
  cfg = T5Config(vocab_size=a.vocab_size, d_model=a.d_model, d_kv=a.head_dim, d_ff=a.d_ff,
                 num_layers=a.num_encoder_layers, num_decoder_layers=a.num_decoder_layers,
                 num_heads=a.num_heads, dropout_rate=a.dropout_rate,
                 feed_forward_proj='relu', decoder_start_token_id=0, pad_token_id=0,
                 eos_token_id=1)
  model = T5ForConditionalGeneration(cfg)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
  x = torch.randint(2, a.vocab_size, (a.batch_size, a.input_len))
  y = torch.randint(2, a.vocab_size, (a.batch_size, a.target_len))
  mask = None
  lengths = None
  if a.lengths_file:
    with open(a.lengths_file) as f:
      lengths = json.load(f)
    if len(lengths) < (a.warmup + a.steps) * a.batch_size:
      p.error(f'{a.lengths_file} has {len(lengths)} lengths, fewer than '
              f'(warmup + steps) x batch_size')
  times = []
  for i in range(a.warmup + a.steps):
    if lengths is not None:  # this batch's lengths, padded to its longest
      n = torch.tensor(lengths[i * a.batch_size:(i + 1) * a.batch_size])
      width = int(n.max())
      mask = (torch.arange(width)[None] < n[:, None]).long()
      x = torch.randint(2, a.vocab_size, (a.batch_size, width)) * mask
    t0 = time.perf_counter()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.bf16):
      loss = model(input_ids=x, attention_mask=mask, labels=y).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  step = statistics.median(times)
  print(json.dumps({'peer': 'hf-t5', 'torch': torch.__version__, 'threads':
                    torch.get_num_threads(), 'params': sum(q.numel() for q in model.parameters()),
                    'batch_size': a.batch_size, 'median_step_ms': round(step * 1e3, 1),
                    # Batches of different widths: examples over the summed time.
                    'examples_per_s': round(a.batch_size / step if lengths is None else
                                            a.batch_size * len(times) / sum(times), 1)}))


if __name__ == '__main__':
  main()
