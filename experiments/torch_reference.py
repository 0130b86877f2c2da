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


def batch_size(cfg, n_train: int) -> int:
  """grokjax's batch of a run (grokjax.plan.build): min(batch_size, int(N_train *
  batch_frac)), at least 1."""
  return max(min(cfg.batch_size, int(n_train * cfg.batch_frac)), 1)


def lr_factor(warmup_steps: int):
  """grokjax's linear warmup (grokjax.optim.warmup): update t (from 0) is scaled by
  min(1, (t + 1) / max(warmup_steps, 1)); warmup_steps=0 is no warmup."""
  return lambda t: min(1.0, (t + 1) / max(warmup_steps, 1))


class Loop:
  """One run of the paper model: its model, AdamW with warmup, batch and training loop."""

  def __init__(self, table, train_mask, cfg, device: str = "cpu"):
    torch.manual_seed(0)
    self.cfg, self.device = cfg, device
    self.inputs = torch.as_tensor(table.inputs, dtype=torch.long, device=device)
    self.labels = torch.as_tensor(table.labels, dtype=torch.long, device=device)
    self.train_rows = torch.as_tensor(np.flatnonzero(train_mask), device=device)
    self.batch = batch_size(cfg, len(self.train_rows))
    m = cfg.model
    self.model = Transformer(table.vocab_size, table.n, m.num_layers, m.width, m.num_heads).to(
      device
    )
    o = cfg.optim
    self.opt = torch.optim.AdamW(
      self.model.parameters(), lr=o.lr, betas=(o.b1, o.b2), weight_decay=o.weight_decay
    )
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(o.warmup_steps))
    self.loss_fn = nn.CrossEntropyLoss()
    self.per_epoch = max(len(self.train_rows) // self.batch, 1)  # as Sweep.steps_per_epoch

  def run(self, n: int) -> None:
    """n training steps, evaluating on the full table every cfg.eval_every steps."""
    cfg, device = self.cfg, self.device
    perm = None
    for step in range(n):
      if step % self.per_epoch == 0:
        perm = self.train_rows[torch.randperm(len(self.train_rows), device=device)]
      rows = perm[(step % self.per_epoch) * self.batch : (step % self.per_epoch + 1) * self.batch]
      loss = self.loss_fn(self.model(self.inputs[rows]), self.labels[rows])
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      self.opt.step()
      self.sched.step()
      if (step + 1) % cfg.eval_every == 0:
        with torch.no_grad():
          for chunk in torch.split(torch.arange(len(self.labels), device=device), cfg.eval_batch):
            (self.model(self.inputs[chunk]).argmax(-1) == self.labels[chunk]).float().mean().item()


def steps_per_second(table, train_mask, cfg, steps: int, device: str = "cpu") -> float:
  """Training steps/s (evaluation on the full table every cfg.eval_every steps included)."""
  loop = Loop(table, train_mask, cfg, device)
  loop.run(min(steps, 20))  # warm up
  if device != "cpu":
    torch.cuda.synchronize()
  start = time.perf_counter()
  loop.run(steps)
  if device != "cpu":
    torch.cuda.synchronize()
  elapsed = time.perf_counter() - start
  assert math.isfinite(elapsed)
  return steps / elapsed
