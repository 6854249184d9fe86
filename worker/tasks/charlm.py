"""``charlm``: a small character-level transformer on the Python standard library's source."""

from __future__ import annotations

import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from lrtune.tasks import BUILTIN_TASKS
from worker.tasks.base import Task, TaskData

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


class CharTransformer(nn.Module):
    def __init__(self, width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(CONTEXT, width) * 0.02)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.position[:n]
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(h)  # type: ignore[no-any-return]


class CharLM(Task):
    info = BUILTIN_TASKS["charlm"]

    def data(self) -> TaskData:
        return _data()

    def model(self) -> nn.Module:
        return CharTransformer()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.reshape(-1, VOCAB), target.reshape(-1))
