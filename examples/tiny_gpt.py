"""A tiny GPT with tied embeddings, trained on CPU in seconds, healthy or exploding, and heard.

    python examples/tiny_gpt.py [--optimizer sgd] [--lr 0.1] [--steps 60] [--mapping pentatonic] [--out-dir tiny_gpt]

The model follows nanoGPT's ``model.py`` in miniature: token and position embeddings, 4 pre-norm blocks
(causal self-attention, a 4x MLP), a final layer norm and an output layer whose weight *is* the token
embedding's (tied), so ``bridge.watch`` measures it once: 27 layers, grouped onto 7 MIDI channels by
block. The data is a small synthetic language (subject verb object sentences, 28 symbols), made here,
so nothing is downloaded.

``RUNS`` are the two compared by ``examples/post_runs.py``: SGD with momentum 0.9 at lr 0.1 trains
healthily; at lr 0.7 every layer's norm climbs for about 35 steps, then the loss and the norms are NaN.
(AdamW at lr 1.0 behaves otherwise on this model: a few layers explode, the layer norms and the embedding,
while the weights' gradients vanish as the activations saturate, and that is what it sounds like.)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import bridge

#: The runs compared by examples/post_runs.py: (name, optimizer, learning rate), healthy first.
RUNS = (("gpt-sgd-lr0.1", "sgd", 0.1), ("gpt-sgd-lr0.7", "sgd", 0.7))
#: Steps of each run: enough for the lr 0.7 run to explode (NaN from about step 36).
STEPS = 60
OPTIMIZERS = ("sgd", "adamw")

_WORDS = {
    "subject": ["the cat", "a dog", "my bird", "the fox", "a cow"],
    "verb": ["sees", "eats", "likes", "finds"],
    "object": ["the mat", "a bone", "the sun", "some hay", "a box"],
}
ALPHABET = "abcdefghijklmnopqrstuvwxyz ."  #: the 28 symbols of the data


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of the tiny GPT."""

    vocab_size: int = len(ALPHABET)
    block_size: int = 32
    n_layer: int = 4
    n_head: int = 2
    n_embd: int = 32


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, time, channels))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """nanoGPT in miniature; ``lm_head.weight`` is ``transformer.wte.weight`` (tied)."""

    def __init__(self, config: GPTConfig = GPTConfig()) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            "ln_f": nn.LayerNorm(config.n_embd),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in nanoGPT and GPT-2
        for module in self.modules():  # nanoGPT's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of predicting ``targets`` from ``tokens`` (both (batch, time) int64)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.transformer.wte(tokens) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def make_text(sentences: int, seed: int = 0) -> torch.Tensor:
    """The synthetic language as symbol indices: ``sentences`` random sentences, e.g. "a dog eats the mat."."""
    generator = torch.Generator().manual_seed(seed)

    def pick(kind: str) -> str:
        words = _WORDS[kind]
        return words[int(torch.randint(len(words), (1,), generator=generator))]

    text = " ".join(f"{pick('subject')} {pick('verb')} {pick('object')}." for _ in range(sentences))
    return torch.tensor([ALPHABET.index(c) for c in text], dtype=torch.long)


def batches(text: torch.Tensor, batch_size: int, block_size: int,
            seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless source of (tokens, targets) batches of random windows of ``text``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(len(text) - block_size - 1, (batch_size,), generator=generator)
        tokens = torch.stack([text[s:s + block_size] for s in starts.tolist()])
        targets = torch.stack([text[s + 1:s + 1 + block_size] for s in starts.tolist()])
        yield tokens, targets


@dataclass(frozen=True)
class TinyRun:
    """What a training run gave: the losses per step and the watch's closing summary."""

    losses: list[float]
    summary: str


def train_tiny_gpt(optimizer_name: str, lr: float, steps: int, *, seed: int = 0, batch_size: int = 16,
                   **watch: object) -> TinyRun:
    """Train a fresh ``TinyGPT`` for ``steps`` steps under ``bridge.watch(**watch)``: ``"sgd"`` (momentum 0.9)
    or ``"adamw"`` (weight decay 0.1) at ``lr``."""
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer_name!r}")
    torch.manual_seed(seed)
    model = TinyGPT()
    optimizer: torch.optim.Optimizer
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    source = batches(make_text(2000, seed), batch_size, model.config.block_size, seed)
    losses = []
    with bridge.watch(model, optimizer, **watch) as w:
        for _ in range(steps):
            tokens, targets = next(source)
            optimizer.zero_grad()
            loss = model(tokens, targets)
            loss.backward()
            w.record_loss(loss)
            optimizer.step()
            losses.append(float(loss.detach()))
    return TinyRun(losses, w.stats.summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (SGD: 0.7 explodes)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mapping", default="pentatonic")
    parser.add_argument("--out-dir", default="tiny_gpt")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(exist_ok=True)
    name = f"gpt-{args.optimizer}-lr{args.lr:g}"
    run = train_tiny_gpt(args.optimizer, args.lr, args.steps, seed=args.seed, mapping=args.mapping,
                         record=out / f"{name}.gbrun", wav=out / f"{name}.wav", midi_file=out / f"{name}.mid")
    finite = [x for x in run.losses if math.isfinite(x)]
    print(f"{name}: loss {run.losses[0]:.3g} -> {run.losses[-1]:.3g} (lowest {min(finite, default=math.nan):.3g}); "
          f"wrote {out}/{name}.wav, .mid and .gbrun")


if __name__ == "__main__":
    main()
