"""``charlm``: a small character-level transformer on the Python standard library's source."""

from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from lrtune.tasks import BUILTIN_TASKS
from lrtune_worker.tasks.base import Task, TaskData

SOURCES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py",
           "heapq.py", "colorsys.py", "keyword.py", "numbers.py")
VOCAB = 128  # ASCII; anything else becomes '?'
CONTEXT = 64
TRAIN, VAL = 1024, 256


@lru_cache(maxsize=1)
def _data() -> TaskData:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8", errors="replace")
                   for name in SOURCES if (stdlib / name).exists())
    codes = torch.tensor([c if c < VOCAB else ord("?") for c in text.encode("ascii", "replace")],
                         dtype=torch.long)
    cut = int(0.9 * len(codes))
    gen = torch.Generator().manual_seed(0)

    def windows(part: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(part) - CONTEXT - 1, (n,), generator=gen)
        idx = starts[:, None] + torch.arange(CONTEXT + 1)
        chunk = part[idx]
        return chunk[:, :-1], chunk[:, 1:]

    x_train, y_train = windows(codes[:cut], TRAIN)
    x_val, y_val = windows(codes[cut:], VAL)
    return TaskData(x_train, y_train, x_val, y_val)


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, attention written out so it batches under vmap
    (scaled_dot_product_attention has no batching rule on CPU)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, w // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # batch, head, position, dim
        scores = (q @ k.transpose(-2, -1)) / (w // self.heads) ** 0.5
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        h = h + self.out((attn @ v).transpose(1, 2).reshape(b, n, w))
        return h + self.mlp(self.norm2(h))  # type: ignore[no-any-return]


class CharTransformer(nn.Module):
    def __init__(self, width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(CONTEXT, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        causal = torch.triu(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", causal, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.position[:n]
        for block in self.blocks:
            h = block(h, self.mask[:n, :n])
        return self.head(self.norm(h))  # type: ignore[no-any-return]


class CharLM(Task):
    info = BUILTIN_TASKS["charlm"]

    def data(self) -> TaskData:
        return _data()

    def model(self) -> nn.Module:
        return CharTransformer()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.reshape(-1, VOCAB), target.reshape(-1))
