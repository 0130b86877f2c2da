"""The paper model as a plain PyTorch loop, one run at a time: the baseline bench.py
measures grokjax against (same architecture, optimizer, batch and eval cadence)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
    self.q, self.v, self.out = (nn.Linear(width, width) for _ in range(3))
    self.k = nn.Linear(width, width, bias=False)
    self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

  def forward(self, h):
    b, t, d = h.shape
    a = self.ln1(h)
    split = lambda x: x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
    q, k, v = split(self.q(a)), split(self.k(a)), split(self.v(a))
    att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = h + self.out(att.transpose(1, 2).reshape(b, t, d))
    return h + self.mlp(self.ln2(h))


class Transformer(nn.Module):
  def __init__(self, vocab: int, classes: int, layers=2, width=128, heads=4):
    super().__init__()
    self.embed = nn.Embedding(vocab, width)
    self.pos = nn.Parameter(torch.randn(4, width) * 0.02)
    self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
    self.ln = nn.LayerNorm(width)
    self.unembed = nn.Linear(width, classes)

  def forward(self, tokens):
    h = self.embed(tokens) + self.pos
    for block in self.blocks:
      h = block(h)
    return self.unembed(self.ln(h[:, -1]))


def steps_per_second(table, train_mask, cfg, steps: int, device: str = "cpu") -> float:
  """Training steps/s (evaluation on the full table every cfg.eval_every steps included)."""
  torch.manual_seed(0)
  inputs = torch.as_tensor(table.inputs, dtype=torch.long, device=device)
  labels = torch.as_tensor(table.labels, dtype=torch.long, device=device)
  train_rows = torch.as_tensor(np.flatnonzero(train_mask), device=device)
  batch = min(cfg.batch_size, len(train_rows) // 2)
  m = cfg.model
  model = Transformer(table.vocab_size, table.n, m.num_layers, m.width, m.num_heads).to(device)
  o = cfg.optim
  opt = torch.optim.AdamW(
    model.parameters(), lr=o.lr, betas=(o.b1, o.b2), weight_decay=o.weight_decay
  )
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / o.warmup_steps))
  loss_fn = nn.CrossEntropyLoss()
  per_epoch = max(len(train_rows) // batch, 1)

  def run(n):
    perm = None
    for step in range(n):
      if step % per_epoch == 0:
        perm = train_rows[torch.randperm(len(train_rows), device=device)]
      rows = perm[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
      loss = loss_fn(model(inputs[rows]), labels[rows])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      if (step + 1) % cfg.eval_every == 0:
        with torch.no_grad():
          for chunk in torch.split(torch.arange(len(labels), device=device), cfg.eval_batch):
            (model(inputs[chunk]).argmax(-1) == labels[chunk]).float().mean().item()

  run(min(steps, 20))  # warm up
  if device != "cpu":
    torch.cuda.synchronize()
  start = time.perf_counter()
  run(steps)
  if device != "cpu":
    torch.cuda.synchronize()
  elapsed = time.perf_counter() - start
  assert math.isfinite(elapsed)
  return steps / elapsed
