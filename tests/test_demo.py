"""Tests for bridge.demo: the post's network, the offline digits, the IDX reader and the training loop."""

from __future__ import annotations

import gzip
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.demo import (
    MNIST_MEAN,
    MNIST_STD,
    POST_RUNS,
    DemoConfig,
    DemoResult,
    PostNet,
    load_digits_28,
    load_mnist_idx,
    train_demo,
)

# ---------------------------------------------------------------------------------------------- PostNet


def test_postnet_layers_in_the_posts_order_with_hand_counted_parameters() -> None:
    model = PostNet()
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    # weights + biases, counted by hand
    expected = {
        "conv1": 20 * 1 * 5 * 5 + 20,  # 520
        "conv2": 50 * 20 * 5 * 5 + 50,  # 25 050
        "fc1": (4 * 4 * 50) * 500 + 500,  # 400 500
        "fc2": 500 * 10 + 10,  # 5 010
    }
    assert expected == {"conv1": 520, "conv2": 25050, "fc1": 400500, "fc2": 5010}
    for name, count in expected.items():
        layer = getattr(model, name)
        assert sum(p.numel() for p in layer.parameters()) == count
    assert sum(p.numel() for p in model.parameters()) == 431080
    assert tuple(model.conv1.weight.shape) == (20, 1, 5, 5)
    assert tuple(model.conv2.weight.shape) == (50, 20, 5, 5)
    assert tuple(model.fc1.weight.shape) == (500, 800)
    assert tuple(model.fc2.weight.shape) == (10, 500)


def test_postnet_outputs_log_probabilities() -> None:
    torch.manual_seed(1)
    output = PostNet()(torch.randn(3, 1, 28, 28))
    assert tuple(output.shape) == (3, 10)
    torch.testing.assert_close(output.exp().sum(dim=1), torch.ones(3))
    assert bool((output <= 0).all())


# ------------------------------------------------------------------------------------------- digits


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of 1-D linear interpolation with align_corners=False, from its formula."""
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = int(math.floor(source))
        high = min(low + 1, size_in - 1)
        frac = source - low
        weights[i, low] += 1.0 - frac
        weights[i, high] += frac
    return weights


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits_28()


@pytest.fixture(scope="module")
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    return pixels.reshape(-1, 8, 8), labels


def test_digits_shape_dtype_and_labels(digits, raw_digits) -> None:
    images, labels = digits
    assert tuple(images.shape) == (1797, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert tuple(labels.shape) == (1797,)
    assert set(labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(labels.numpy(), raw_digits[1])


def test_digits_pixels_recomputed_by_hand(digits, raw_digits) -> None:
    images, _ = digits
    raw = raw_digits[0]
    # top-left pixel: the source coordinate (0 + 0.5) * 8/28 - 0.5 < 0 is clamped to 0, so raw[0, 0] is copied
    first = raw[0]
    assert images[0, 0, 0, 0].item() == pytest.approx((first[0, 0] / 16 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    # pixel (13, 14): source = (i + 0.5) * 8/28 - 0.5, i.e. row 3 + 5/14 and column 3 + 9/14, blended bilinearly
    row_src = (13 + 0.5) * 8 / 28 - 0.5  # 3.357142...
    col_src = (14 + 0.5) * 8 / 28 - 0.5  # 3.642857...
    r0, c0 = int(row_src), int(col_src)
    fr, fc = row_src - r0, col_src - c0
    value = ((1 - fr) * (1 - fc) * first[r0, c0] + (1 - fr) * fc * first[r0, c0 + 1]
             + fr * (1 - fc) * first[r0 + 1, c0] + fr * fc * first[r0 + 1, c0 + 1])
    assert images[0, 0, 13, 14].item() == pytest.approx((value / 16 - MNIST_MEAN) / MNIST_STD, abs=1e-5)


def test_digits_whole_set_matches_separable_bilinear_and_normalisation(digits, raw_digits) -> None:
    images, _ = digits
    weights = _bilinear_matrix(8, 28)
    upsampled = np.einsum("ri,nij,cj->nrc", weights, raw_digits[0], weights) / 16.0
    expected = (upsampled - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(images[:, 0].numpy(), expected, atol=1e-5)
    # mean and spread follow the formula from the [0, 1] pixels
    assert images.mean().item() == pytest.approx((upsampled.mean() - MNIST_MEAN) / MNIST_STD, rel=1e-4)
    assert images.std().item() == pytest.approx(upsampled.std(ddof=1) / MNIST_STD, rel=1e-4)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'gradbridge\[demo\]'"):
        load_digits_28()


# ---------------------------------------------------------------------------------------------- IDX


def _write_idx(path: Path, magic: int, data: np.ndarray, *, compress: bool = False) -> None:
    payload = struct.pack(">i", magic) + struct.pack(f">{data.ndim}I", *data.shape) + data.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def _tiny_set(count: int = 3, rows: int = 2, cols: int = 3) -> tuple[np.ndarray, np.ndarray]:
    pixels = (np.arange(count * rows * cols) * 13 % 256).astype(np.uint8).reshape(count, rows, cols)
    labels = (np.arange(count) * 7 % 10).astype(np.uint8)
    return pixels, labels


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_idx_reader_reads_exact_values(tmp_path: Path, compress: bool) -> None:
    pixels, labels = _tiny_set()
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", 2051, pixels, compress=compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", 2049, labels, compress=compress)
    images, read_labels = load_mnist_idx(tmp_path)
    assert tuple(images.shape) == (3, 1, 2, 3)
    assert images.dtype == torch.float32 and read_labels.dtype == torch.int64
    assert read_labels.tolist() == [0, 7, 4]
    # pixel 5 of image 0 is 5 * 13 = 65; image 2, row 1, col 2 is (2*6 + 5) * 13 = 221
    assert images[0, 0, 1, 2].item() == pytest.approx((65 / 255 - 0.1307) / 0.3081, abs=1e-6)
    assert images[2, 0, 1, 2].item() == pytest.approx((221 / 255 - 0.1307) / 0.3081, abs=1e-6)
    expected = (pixels.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(images[:, 0].numpy(), expected, atol=1e-6)


def test_idx_bad_magic_names_file_and_expected_magic(tmp_path: Path) -> None:
    pixels, labels = _tiny_set()
    _write_idx(tmp_path / "train-images-idx3-ubyte", 2049, pixels)  # the labels' magic on the images
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, labels)
    with pytest.raises(ValueError) as caught:
        load_mnist_idx(tmp_path)
    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message
    assert "2051" in message and "2049" in message


def test_idx_truncated_data_is_reported(tmp_path: Path) -> None:
    pixels, labels = _tiny_set()
    images_path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(images_path, 2051, pixels)
    images_path.write_bytes(images_path.read_bytes()[:-4])  # 18 data bytes declared, 14 left
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, labels)
    with pytest.raises(ValueError, match=r"declares shape \(3, 2, 3\) \(18 data bytes\) but holds 14"):
        load_mnist_idx(tmp_path)


def test_idx_count_mismatch_is_reported(tmp_path: Path) -> None:
    pixels, labels = _tiny_set()
    _write_idx(tmp_path / "train-images-idx3-ubyte", 2051, pixels)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, labels[:2])
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_mnist_idx(tmp_path)


def test_idx_missing_directory_and_files(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as caught:
        load_mnist_idx(absent)
    assert str(absent) in str(caught.value) and "train-images-idx3-ubyte" in str(caught.value)
    _, labels = _tiny_set()
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, labels, compress=True)
    with pytest.raises(FileNotFoundError) as caught:
        load_mnist_idx(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "lacks train-images-idx3-ubyte" in message
    assert "mnist" in message.lower() and "http" in message


# -------------------------------------------------------------------------------------------- config


def test_post_runs_are_the_five_settings_of_the_post() -> None:
    settings = [(c.optimizer, c.lr, c.batch_size, c.momentum, c.steps) for c in POST_RUNS.values()]
    assert settings == [
        ("sgd", 0.01, 10, 0.5, 200),
        ("sgd", 0.1, 10, 0.5, 200),
        ("sgd", 1.0, 10, 0.5, 200),
        ("sgd", 1.0, 256, 0.5, 200),
        ("adam", 0.01, 10, 0.5, 200),
    ]
    assert POST_RUNS["sgd-lr1.0-bs256"].describe() == "SGD lr 1 momentum 0.5, batch 256, 200 steps, seed 0"
    assert POST_RUNS["adam-lr0.01"].describe() == "Adam lr 0.01, batch 10, 200 steps, seed 0"


def test_config_normalises_values() -> None:
    config = DemoConfig(optimizer=" Adam ", lr=1, momentum=0, mnist_dir="~/data")
    assert config.optimizer == "adam"
    assert isinstance(config.lr, float) and config.lr == 1.0
    assert config.mnist_dir == Path("~/data")


@pytest.mark.parametrize(
    ("changes", "error", "pattern"),
    [
        ({"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of sgd, adam, got 'rmsprop'"),
        ({"optimizer": 3}, TypeError, r"optimizer must be a str"),
        ({"lr": 0.0}, ValueError, r"lr must be finite and > 0, got 0.0; use e.g. 0.01"),
        ({"lr": -0.1}, ValueError, r"lr must be finite and > 0, got -0.1"),
        ({"lr": float("nan")}, ValueError, r"lr must be finite and > 0, got nan"),
        ({"lr": "0.1"}, TypeError, r"lr must be a number, got str"),
        ({"momentum": -0.5}, ValueError, r"momentum must be finite and ≥ 0, got -0.5"),
        ({"batch_size": 0}, ValueError, r"batch_size must be finite and ≥ 1, got 0"),
        ({"batch_size": 2.0}, TypeError, r"batch_size must be an int, got float"),
        ({"batch_size": True}, TypeError, r"batch_size must be an int, got bool"),
        ({"steps": 0}, ValueError, r"steps must be finite and ≥ 1, got 0"),
        ({"seed": -1}, ValueError, r"seed must be finite and ≥ 0, got -1"),
        ({"seed": 2**63}, ValueError, r"seed must be in \[0, 2\*\*63\)"),
        ({"mnist_dir": 5}, TypeError, r"mnist_dir must be a path or None, got int"),
    ],
)
def test_config_validation(changes: dict, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        DemoConfig(**changes)


# ---------------------------------------------------------------------------------------------- train


class _Listener:
    """A stand-in for bridge.watch: counts entries and exits, records losses and step order."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.entered = 0
        self.exited: list[type[BaseException] | None] = []
        self.losses: list[torch.Tensor] = []
        self.order: list[str] = []
        self.grad_ready: list[bool] = []
        optimizer.register_step_pre_hook(lambda *_: self.order.append("step"))

    def __enter__(self) -> "_Listener":
        self.entered += 1
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.exited.append(kind)

    def record_loss(self, loss: torch.Tensor) -> None:
        self.order.append("loss")
        self.losses.append(loss)
        self.grad_ready.append(self.model.fc2.weight.grad is not None)


def test_train_demo_hooks_contract() -> None:
    listeners: list[_Listener] = []

    def on_optimizer(model, optimizer):
        listeners.append(_Listener(model, optimizer))
        return listeners[-1]

    progress: list[tuple[int, float]] = []
    result = train_demo(DemoConfig(steps=5), on_optimizer=on_optimizer, on_step=lambda s, l: progress.append((s, l)))
    assert isinstance(result, DemoResult)
    (listener,) = listeners
    assert isinstance(listener.model, PostNet)
    assert isinstance(listener.optimizer, torch.optim.SGD)
    assert listener.optimizer.param_groups[0]["lr"] == 0.01
    assert listener.optimizer.param_groups[0]["momentum"] == 0.5
    assert listener.entered == 1 and listener.exited == [None]
    assert listener.order == ["loss", "step"] * 5
    assert listener.grad_ready == [True] * 5
    assert len(listener.losses) == 5
    for tensor in listener.losses:
        assert tensor.dim() == 0 and not tensor.requires_grad
    assert [t.item() for t in listener.losses] == result.losses
    assert progress == list(enumerate(result.losses))
    assert result.steps == 5 and len(result.losses) == 5
    assert result.final_loss == result.losses[-1]
    assert result.non_finite is False and result.first_non_finite_step is None
    assert "scikit-learn digits" in result.data_source
    # an untrained 10-way classifier guesses evenly: loss near ln 10 = 2.3026 nats
    assert result.losses[0] == pytest.approx(math.log(10), abs=0.15)


def test_train_demo_adam_and_a_manager_without_record_loss() -> None:
    seen: list[torch.optim.Optimizer] = []
    exits: list[bool] = []

    class Plain:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc) -> None:
            exits.append(True)

    def on_optimizer(model, optimizer):
        seen.append(optimizer)
        return Plain()

    result = train_demo(DemoConfig(optimizer="adam", lr=0.001, steps=2), on_optimizer=on_optimizer)
    assert isinstance(seen[0], torch.optim.Adam) and seen[0].param_groups[0]["lr"] == 0.001
    assert exits == [True] and result.steps == 2


def test_train_demo_exits_the_manager_on_error() -> None:
    listeners: list[_Listener] = []

    def on_optimizer(model, optimizer):
        listeners.append(_Listener(model, optimizer))
        return listeners[-1]

    def on_step(step: int, loss: float) -> None:
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_demo(DemoConfig(steps=5), on_optimizer=on_optimizer, on_step=on_step)
    assert listeners[0].entered == 1 and listeners[0].exited == [KeyboardInterrupt]
    assert len(listeners[0].losses) == 2


def test_train_demo_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="config must be a DemoConfig"):
        train_demo({"steps": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_step must be callable"):
        train_demo(DemoConfig(steps=1), on_step=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_optimizer must return a context manager"):
        train_demo(DemoConfig(steps=1), on_optimizer=lambda model, optimizer: 42)  # type: ignore[arg-type,return-value]


def test_same_seed_same_losses_other_seed_other_losses() -> None:
    first = train_demo(DemoConfig(steps=6, seed=3)).losses
    again = train_demo(DemoConfig(steps=6, seed=3)).losses
    other = train_demo(DemoConfig(steps=6, seed=4)).losses
    assert first == again
    assert first != other


def test_sgd_learns_real_digits() -> None:
    losses = train_demo(DemoConfig(optimizer="sgd", lr=0.01, steps=30)).losses
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert first == pytest.approx(math.log(10), abs=0.15)
    assert last < first - 0.05


def test_epochs_cycle_past_the_end_of_the_data() -> None:
    # 1797 digits at batch 900 are 2 batches per epoch (900, 897): the third step starts a second epoch
    result = train_demo(DemoConfig(batch_size=900, steps=3))
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)


def test_divergence_to_nan_carries_on() -> None:
    result = train_demo(DemoConfig(optimizer="sgd", lr=5.0, steps=12))
    assert result.steps == 12 and len(result.losses) == 12
    assert result.non_finite is True
    first_bad = next(i for i, value in enumerate(result.losses) if not math.isfinite(value))
    assert result.first_non_finite_step == first_bad
    assert math.isnan(result.losses[-1]) and math.isnan(result.final_loss)


def _write_mnist(directory: Path, count: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    _write_idx(directory / "train-images-idx3-ubyte.gz", 2051,
               rng.integers(0, 256, size=(count, rows, cols)), compress=True)
    _write_idx(directory / "train-labels-idx1-ubyte", 2049, np.arange(count) % 10)


def test_train_demo_reads_mnist_dir(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 20, 28, 28)
    result = train_demo(DemoConfig(mnist_dir=tmp_path, batch_size=8, steps=3))
    assert result.steps == 3
    assert result.data_source == f"MNIST IDX files in {tmp_path} (20 images)"


def test_train_demo_rejects_mnist_of_the_wrong_size(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 4, 10, 10)
    with pytest.raises(ValueError, match=r"\(10, 10\) pixels, the post's network needs 28×28"):
        train_demo(DemoConfig(mnist_dir=tmp_path, steps=1))
