"""The 2019 experiment, re-run: the post's CNN trained on real handwritten digits, offline, on CPU.

Data comes from scikit-learn's ``load_digits`` (1797 digits, 8×8, upsampled to 28×28) or, when the
user points at them, from MNIST's own IDX files. Nothing here needs torchvision.

``train_demo`` runs the training loop and leaves the listening to its caller: ``on_optimizer(model,
optimizer)`` returns a context manager entered once around the loop (that is where
``bridge.watch(model, optimizer, ...)`` goes). If the object its ``__enter__`` returns has a
``record_loss`` method, the loop calls ``record_loss(loss)`` with the step's detached 0-dim loss tensor
after ``backward()`` and before ``optimizer.step()``, so the frame captured at that step carries its loss.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ContextManager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "POST_RUNS",
    "DemoConfig",
    "DemoResult",
    "PostNet",
    "load_digits_28",
    "load_mnist_idx",
    "train_demo",
]

MNIST_MEAN = 0.1307
"""Mean pixel of MNIST's training set on the [0, 1] scale; the post normalises with it."""
MNIST_STD = 0.3081
"""Standard deviation of MNIST's training pixels on the [0, 1] scale."""

OPTIMIZERS = ("sgd", "adam")
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_IMAGES_FILE = "train-images-idx3-ubyte"
MNIST_LABELS_FILE = "train-labels-idx1-ubyte"
MNIST_SOURCE = (
    "MNIST is published at https://yann.lecun.com/exdb/mnist/ (mirror: "
    "https://ossci-datasets.s3.amazonaws.com/mnist/); torchvision keeps the same files under MNIST/raw/"
)
_SEED_LIMIT = 2**63


class PostNet(nn.Module):
    """The post's network: two 5×5 convolutions and two linear layers, for 1×28×28 inputs.

    Input: float tensor ``(N, 1, 28, 28)``. Output: log-probabilities ``(N, 10)`` (``log_softmax``).
    Layers are registered in the order conv1, conv2, fc1, fc2: the order the post sounded them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def _normalise(images_01: torch.Tensor) -> torch.Tensor:
    """Pixels on [0, 1] → the post's normalisation ``(x − 0.1307) / 0.3081``."""
    return (images_01 - MNIST_MEAN) / MNIST_STD


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits, shaped like MNIST for the post's network.

    Each 8×8 image (values 0–16) is upsampled to 28×28 (bilinear, ``align_corners=False``), divided by 16
    and normalised like the post. Returns ``(images, labels)``: float32 ``(1797, 1, 28, 28)`` and int64
    ``(1797,)`` with labels 0–9. Needs scikit-learn (the ``demo`` extra); the data ships with it, no download.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits demo needs scikit-learn, which is not installed; "
            "install the demo extra: pip install 'gradbridge[demo]'"
        ) from exc
    pixels, labels = load_digits(return_X_y=True)
    images_8 = torch.from_numpy(np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 8, 8))
    images_28 = F.interpolate(images_8, size=(28, 28), mode="bilinear", align_corners=False)
    images = _normalise(images_28 / 16.0).contiguous()
    return images, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _find_idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes: big-endian int32 magic, ``dims`` uint32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}; re-download it ({MNIST_SOURCE})") from exc
    header_bytes = 4 + 4 * dims
    if len(raw) < header_bytes:
        raise ValueError(
            f"IDX file {path} is {len(raw)} bytes, shorter than its {header_bytes}-byte header; "
            f"the file is truncated, re-download it ({MNIST_SOURCE})"
        )
    found_magic = int(np.frombuffer(raw, dtype=">i4", count=1)[0])
    if found_magic != magic:
        raise ValueError(
            f"IDX file {path} has magic number {found_magic}, expected {magic} "
            f"({'images, 3 dimensions' if magic == IDX_IMAGES_MAGIC else 'labels, 1 dimension'}, unsigned "
            f"bytes); check that it is the right MNIST file and that it is not still compressed"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_bytes != expected:
        raise ValueError(
            f"IDX file {path} declares shape {shape} ({expected} data bytes) but holds "
            f"{len(raw) - header_bytes}; the file is truncated or damaged, re-download it ({MNIST_SOURCE})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


def load_mnist_idx(directory: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's training set from its IDX files in ``directory``.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (or their ``.gz`` versions). Pixels
    0–255 are divided by 255 and normalised like the post. Returns ``(images, labels)``: float32
    ``(N, 1, rows, cols)`` and int64 ``(N,)`` with labels 0–9.
    Raises ``FileNotFoundError`` if the directory or a file is missing, ``ValueError`` if a file is damaged.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"mnist directory must be a path (str or os.PathLike), got {type(directory).__name__}")
    folder = Path(directory).expanduser()
    expected = f"{MNIST_IMAGES_FILE} and {MNIST_LABELS_FILE} (optionally .gz)"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"mnist directory {folder} does not exist or is not a directory; point it at the folder "
            f"holding {expected}. {MNIST_SOURCE}"
        )
    images_path = _find_idx_file(folder, MNIST_IMAGES_FILE)
    labels_path = _find_idx_file(folder, MNIST_LABELS_FILE)
    missing = [name for name, path in ((MNIST_IMAGES_FILE, images_path), (MNIST_LABELS_FILE, labels_path))
               if path is None]
    if images_path is None or labels_path is None:
        raise FileNotFoundError(
            f"mnist directory {folder} lacks {' and '.join(missing)} (or .gz); it must hold {expected}. "
            f"{MNIST_SOURCE}"
        )
    pixels = _read_idx(images_path, IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, 1)
    if pixels.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {pixels.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
            f"use the images and labels of the same set"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path} holds label {int(labels.max())}, expected digits 0–9; is it MNIST?")
    images = torch.from_numpy(pixels.astype(np.float32)).unsqueeze(1) / 255.0
    return _normalise(images).contiguous(), torch.from_numpy(labels.astype(np.int64))


def _check_number(name: str, value: Any, *, integer: bool, minimum: float, fix: str, strict: bool = False) -> None:
    """Raise unless ``value`` is an int (or, unless ``integer``, a float), finite and ≥ minimum (> if strict)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "an int" if integer else "a number"
        raise TypeError(f"DemoConfig.{name} must be {wanted}, got {type(value).__name__} {value!r}; {fix}")
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or (value <= minimum if strict else value < minimum):
        bound = f"{'>' if strict else '≥'} {minimum:g}"
        raise ValueError(f"DemoConfig.{name} must be finite and {bound}, got {value!r}; {fix}")


@dataclass(frozen=True)
class DemoConfig:
    """One demo run: optimizer, learning rate, batch size and length.

    Attributes:
        optimizer: ``"sgd"`` or ``"adam"`` (case-insensitive, stored lower-case).
        lr: learning rate, > 0.
        momentum: SGD momentum, ≥ 0 (the post's script used 0.5); Adam ignores it.
        batch_size: images per optimizer step, ≥ 1 (the post's text: 10).
        steps: optimizer steps to run, ≥ 1; epochs repeat, reshuffled, until they are done.
        seed: seeds the weights and the shuffling, 0 ≤ seed < 2**63.
        mnist_dir: folder with MNIST's IDX files; ``None`` uses scikit-learn's digits.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.5
    batch_size: int = 10
    steps: int = 200
    seed: int = 0
    mnist_dir: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, str):
            raise TypeError(f"DemoConfig.optimizer must be a str, one of {OPTIMIZERS}, got {self.optimizer!r}")
        name = self.optimizer.strip().lower()
        if name not in OPTIMIZERS:
            raise ValueError(
                f"DemoConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}; "
                f"pick sgd (the post's) or adam"
            )
        object.__setattr__(self, "optimizer", name)
        _check_number("lr", self.lr, integer=False, minimum=0, strict=True,
                      fix="use e.g. 0.01 (the post tried 0.01, 0.1, 1.0)")
        _check_number("momentum", self.momentum, integer=False, minimum=0.0, fix="use 0 to 0.99 (the post: 0.5)")
        _check_number("batch_size", self.batch_size, integer=True, minimum=1, fix="use e.g. 10 (the post's) or 256")
        _check_number("steps", self.steps, integer=True, minimum=1, fix="use e.g. 200 (the post's)")
        _check_number("seed", self.seed, integer=True, minimum=0, fix="use a seed in [0, 2**63)")
        if self.seed >= _SEED_LIMIT:
            raise ValueError(f"DemoConfig.seed must be in [0, 2**63), got {self.seed}; use a smaller seed")
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "momentum", float(self.momentum))
        if self.mnist_dir is not None:
            if not isinstance(self.mnist_dir, (str, os.PathLike)):
                raise TypeError(
                    f"DemoConfig.mnist_dir must be a path or None, got {type(self.mnist_dir).__name__}; "
                    f"pass the folder holding MNIST's IDX files, or None for scikit-learn's digits"
                )
            object.__setattr__(self, "mnist_dir", Path(self.mnist_dir))

    def describe(self) -> str:
        """The run in plain words, e.g. ``"SGD lr 0.01 momentum 0.5, batch 10, 200 steps, seed 0"``."""
        if self.optimizer == "sgd":
            optimizer = f"SGD lr {self.lr:g} momentum {self.momentum:g}"
        else:
            optimizer = f"Adam lr {self.lr:g}"
        return f"{optimizer}, batch {self.batch_size}, {self.steps} steps, seed {self.seed}"


POST_RUNS: Mapping[str, DemoConfig] = MappingProxyType({
    "sgd-lr0.01": DemoConfig(optimizer="sgd", lr=0.01),
    "sgd-lr0.1": DemoConfig(optimizer="sgd", lr=0.1),
    "sgd-lr1.0": DemoConfig(optimizer="sgd", lr=1.0),
    "sgd-lr1.0-bs256": DemoConfig(optimizer="sgd", lr=1.0, batch_size=256),
    "adam-lr0.01": DemoConfig(optimizer="adam", lr=0.01),
})
"""The post's five runs, in its order: SGD lr 0.01, 0.1, 1.0; SGD lr 1.0 at batch 256; Adam lr 0.01."""


@dataclass(frozen=True)
class DemoResult:
    """What a demo run did.

    Attributes:
        steps: optimizer steps run.
        final_loss: the last step's loss (nats; NaN or Inf if the run diverged).
        losses: every step's loss, in step order (nats).
        non_finite: whether any loss was NaN or ±Inf.
        first_non_finite_step: 0-based step of the first non-finite loss, ``None`` if none.
        data_source: where the images came from, in words.
    """

    steps: int
    final_loss: float
    losses: list[float]
    non_finite: bool
    first_non_finite_step: int | None
    data_source: str


def _load_data(config: DemoConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    if config.mnist_dir is None:
        images, labels = load_digits_28()
        source = f"scikit-learn digits ({images.shape[0]} images, 8×8 upsampled to 28×28)"
    else:
        images, labels = load_mnist_idx(config.mnist_dir)
        source = f"MNIST IDX files in {config.mnist_dir} ({images.shape[0]} images)"
        if tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"MNIST images in {config.mnist_dir} are {tuple(images.shape[2:])} pixels, the post's network "
                f"needs 28×28; point mnist_dir at MNIST itself"
            )
    if images.shape[0] == 0:
        raise ValueError(f"the training data from {source} holds no images; use a non-empty set")
    return images, labels, source


def _make_optimizer(config: DemoConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches forever: each epoch a fresh permutation; the last batch of an epoch may be short."""
    while True:
        order = torch.randperm(count, generator=generator)
        yield from order.split(batch_size)


def train_demo(
    config: DemoConfig,
    *,
    on_optimizer: Callable[[nn.Module, torch.optim.Optimizer], ContextManager[Any]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DemoResult:
    """Train ``PostNet`` for ``config.steps`` optimizer steps and return the losses.

    ``torch.manual_seed(config.seed)`` fixes the weights; a generator seeded with ``config.seed`` shuffles
    the data, reshuffled each epoch, so one config gives the same losses every time.
    ``on_optimizer(model, optimizer)``: returns a context manager entered once around the loop; if what
    its ``__enter__`` returns has ``record_loss``, that is called with each step's detached 0-dim loss
    tensor before ``optimizer.step()``.
    ``on_step(step, loss)``: called after each step with the 0-based step and the loss as a float.
    A diverging run (NaN or Inf loss) carries on to the last step.
    """
    if not isinstance(config, DemoConfig):
        raise TypeError(f"config must be a DemoConfig, got {type(config).__name__}; build one with DemoConfig(...)")
    for name, hook in (("on_optimizer", on_optimizer), ("on_step", on_step)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable or None, got {type(hook).__name__}")
    images, labels, source = _load_data(config)
    torch.manual_seed(config.seed)
    model = PostNet()
    model.train()
    optimizer = _make_optimizer(config, model)
    generator = torch.Generator().manual_seed(config.seed)
    manager = contextlib.nullcontext() if on_optimizer is None else on_optimizer(model, optimizer)
    if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
        raise TypeError(
            f"on_optimizer must return a context manager (e.g. bridge.watch(model, optimizer)), "
            f"got {type(manager).__name__}"
        )
    step_losses: list[torch.Tensor] = []
    with manager as watcher:
        record_loss = getattr(watcher, "record_loss", None)
        if record_loss is not None and not callable(record_loss):
            raise TypeError(
                f"record_loss of {type(watcher).__name__} must be callable, got {type(record_loss).__name__}"
            )
        batches = _batches(images.shape[0], config.batch_size, generator)
        for step in range(config.steps):
            index = next(batches)
            optimizer.zero_grad()
            loss = F.nll_loss(model(images[index]), labels[index])
            loss.backward()
            detached = loss.detach()
            if record_loss is not None:
                record_loss(detached)
            optimizer.step()
            step_losses.append(detached)
            if on_step is not None:
                on_step(step, float(detached.item()))
    losses = [float(value) for value in torch.stack(step_losses).tolist()]
    first_bad = next((step for step, value in enumerate(losses) if not math.isfinite(value)), None)
    return DemoResult(
        steps=len(losses),
        final_loss=losses[-1],
        losses=losses,
        non_finite=first_bad is not None,
        first_non_finite_step=first_bad,
        data_source=source,
    )
