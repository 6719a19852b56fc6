"""Tests for bridge.capture: layer discovery, the fused norm pass, and the optimizer hook."""

from __future__ import annotations

import logging
import math

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bridge.capture import Capture, Layer, find_layers
from bridge.frames import Frame
from bridge.norms import NormReader


def linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    """A Linear layer whose gradients are set by hand (values in the parameters do not matter)."""
    out_features, in_features = len(weight), len(weight[0])
    layer = nn.Linear(in_features, out_features, bias=bias is not None)
    layer.weight.grad = torch.tensor(weight)
    if bias is not None:
        layer.bias.grad = torch.tensor(bias)
    return layer


def read(model: nn.Module, **kwargs: object) -> list[float]:
    return NormReader(find_layers(model, **kwargs)).read().tolist()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = linear([[3.0, 4.0]], [12.0])  # norms: weight 5, bias 12, both 13


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(Block(), Block())
        self.head = linear([[0.0, 2.0]], [0.0])


# --- find_layers and NormReader on hand-set gradients -----------------------------------------


def test_all_parameters_and_weights_only() -> None:
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]))
    assert read(model) == [13.0]  # sqrt(3² + 4² + 12²) = sqrt(169)
    assert read(model, params="weights") == [5.0]  # sqrt(3² + 4²)
    layer = find_layers(model)[0]
    assert layer == Layer("0", ("0.weight", "0.bias"), ())
    assert find_layers(model, params="weights")[0].parameter_names == ("0.weight",)


def test_registration_order_not_alphabetical() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.zeta = linear([[1.0]])
            self.alpha = linear([[2.0]])
            self.mid = nn.ReLU()  # owns no parameters: not a layer
            self.beta = linear([[3.0]])

    model = Net()
    assert [layer.name for layer in find_layers(model)] == ["zeta", "alpha", "beta"]
    assert read(model) == [1.0, 2.0, 3.0]


def test_root_module_is_named_by_its_class() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.zeros(2))
            self.inner = linear([[6.0, 8.0]])

    model = Scale()
    model.gain.grad = torch.tensor([5.0, 12.0])
    layers = find_layers(model)
    assert [layer.name for layer in layers] == ["Scale", "inner"]
    assert layers[0].parameter_names == ("gain",)
    assert read(model) == [13.0, 10.0]


def test_groups_merge_matching_modules_as_root_sum_square() -> None:
    model = Encoder()
    layers = find_layers(model, groups={"enc": r"^encoder\."})
    assert [layer.name for layer in layers] == ["enc", "head"]
    assert layers[0].parameter_names == (
        "encoder.0.fc.weight", "encoder.0.fc.bias", "encoder.1.fc.weight", "encoder.1.fc.bias",
    )
    # two blocks of norm 13 each: sqrt(169 + 169) = 13·sqrt(2); head: sqrt(0 + 4 + 0) = 2
    assert read(model, groups={"enc": r"^encoder\."}) == pytest.approx([13.0 * math.sqrt(2.0), 2.0], rel=1e-15)


def test_group_sits_where_its_first_module_sits_and_first_group_wins() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = linear([[1.0]])
            self.b_attn = linear([[2.0]])
            self.c = linear([[4.0]])
            self.d_attn = linear([[8.0]])

    groups = {"attention": "attn", "everything": "."}
    layers = find_layers(Net(), groups=groups)
    assert [layer.name for layer in layers] == ["everything", "attention"]
    assert read(Net(), groups={"attention": "attn"}) == pytest.approx([1.0, math.sqrt(4 + 64), 4.0])
    assert [x.name for x in find_layers(Net(), groups={"attention": "attn"})] == ["a", "attention", "c"]


def test_depth_groups_by_name_prefix() -> None:
    model = Encoder()
    layers = find_layers(model, depth=1)
    assert [layer.name for layer in layers] == ["encoder", "head"]
    assert read(model, depth=1) == pytest.approx([13.0 * math.sqrt(2.0), 2.0], rel=1e-15)
    assert [layer.name for layer in find_layers(model, depth=2)] == ["encoder.0", "encoder.1", "head"]
    assert [layer.name for layer in find_layers(model, depth=9)] == ["encoder.0.fc", "encoder.1.fc", "head"]


def test_include_keeps_matching_modules() -> None:
    model = Encoder()
    assert [layer.name for layer in find_layers(model, include=r"\.1\.")] == ["encoder.1.fc"]
    assert read(model, include="head") == [2.0]
    assert read(model, include="encoder", depth=1) == pytest.approx([13.0 * math.sqrt(2.0)], rel=1e-15)


def test_frozen_parameters_are_not_measured() -> None:
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]), linear([[1.0]]))
    model[0].bias.requires_grad_(False)
    model[1].weight.requires_grad_(False)
    layers = find_layers(model)
    assert [layer.parameter_names for layer in layers] == [("0.weight",)]
    assert read(model) == [5.0]


def frame_norms(model: nn.Module) -> list[float]:
    """The norms of one frame captured by an explicit ``Capture.step()`` on the model's gradients as set."""
    pending: list[Frame] = []
    Capture(model, None, None, pending.append, auto=False).step()
    return pending[0].resolve().norms.tolist()


def test_equal_parameter_counts_square_in_float64() -> None:
    big = float(np.float32(1e30))
    model = nn.Sequential(linear([[1e30]], [1e30]), linear([[3.0, 4.0]], [12.0]))  # two parameters each
    expected = [math.sqrt(2.0) * big, 13.0]  # sqrt(big² + big²) and sqrt(9 + 16 + 144)
    assert read(model) == pytest.approx(expected, rel=1e-15)
    assert frame_norms(model) == pytest.approx(expected, rel=1e-15)


def test_frames_combine_unequal_layers_missing_gradients_nan_and_inf() -> None:
    model = nn.Sequential(
        linear([[3.0, 4.0]]),  # one parameter: 5
        linear([[1.0, 2.0]], [2.0]),  # sqrt(1 + 4 + 4) = 3
        linear([[math.inf]], [math.nan]),  # inf² + nan² is nan
        linear([[6.0, 8.0]], [1.0]),  # bias gradient removed below: 10
        nn.Linear(2, 2),  # no gradient at all: 0
    )
    model[3].bias.grad = None
    norms = frame_norms(model)
    assert norms[:2] == pytest.approx([5.0, 3.0], rel=1e-7)  # sqrt(5) is a float32 per-parameter norm
    assert math.isnan(norms[2])
    assert norms[3:] == [10.0, 0.0]


def test_frames_of_mixed_dtypes_are_combined_on_the_device() -> None:
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]), nn.Linear(1, 1).double())
    model[1].weight.grad = torch.tensor([[-7.0]], dtype=torch.float64)
    model[1].bias.grad = torch.tensor([24.0], dtype=torch.float64)
    assert NormReader(find_layers(model)).read_parameters()[1] is None  # two groups: layer norms
    assert frame_norms(model) == [13.0, 25.0]


def test_tied_parameter_is_measured_once_in_its_first_owners_layer(caplog: pytest.LogCaptureFixture) -> None:
    shared = linear([[3.0, 4.0]])
    other = nn.Linear(2, 1, bias=False)
    other.weight = shared.weight
    model = nn.Sequential(shared, other)
    with caplog.at_level(logging.WARNING, logger="bridge"):
        layers = find_layers(model)
    assert [r.getMessage() for r in caplog.records] == [
        "1 parameter(s) shared by several modules (tied) are measured once, in the layer of the first module "
        "that owns them: 1.weight is 0.weight (layer '0')"]
    # "1" owns nothing else: it is no layer of its own, and the weight is not counted twice
    assert [(layer.name, layer.parameter_names) for layer in layers] == [("0", ("0.weight",))]
    assert read(model) == [5.0]
    assert read(model, groups={"both": "."}) == [5.0]  # not sqrt(50)
    # a later owner with parameters of its own keeps them in its own layer
    head = nn.Linear(2, 1)
    head.weight = shared.weight
    head.bias.grad = torch.tensor([12.0])
    assert read(nn.Sequential(shared, head)) == [5.0, 12.0]
    # an owner left out by include: the first included owner measures it
    assert [(layer.name, layer.parameter_names) for layer in find_layers(model, include="1")] == [
        ("1", ("1.weight",))]


def test_find_layers_errors_explain_what_exists() -> None:
    model = Encoder()
    with pytest.raises(ValueError, match=r"include='nothing'.*encoder\.0\.fc, encoder\.1\.fc, head"):
        find_layers(model, include="nothing")
    with pytest.raises(ValueError, match=r"include '\(' is not a valid regular expression"):
        find_layers(model, include="(")
    with pytest.raises(ValueError, match=r"groups\['g'\] '\[' is not a valid"):
        find_layers(model, groups={"g": "["})
    with pytest.raises(ValueError, match=r"params must be one of \('all', 'weights'\); got 'bias'"):
        find_layers(model, params="bias")
    with pytest.raises(ValueError, match="either groups or depth, not both"):
        find_layers(model, groups={"g": "."}, depth=1)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        find_layers(model, depth=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_layers("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"none has trainable parameters\): Sequential, 0"):
        find_layers(nn.Sequential(nn.ReLU()))


def test_many_modules_are_listed_up_to_ten() -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(12)])
    with pytest.raises(ValueError, match=r": 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(12 in all\)"):
        find_layers(model, include="x")


# --- the hook in a real training loop -----------------------------------------------------------


def make_run(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, torch.randn(8, 3), torch.randn(8, 2)


def expected_norms(model: nn.Module) -> list[float]:
    """Each Linear's norm, computed independently: sqrt(|dW|² + |db|²) in float64."""
    out = []
    for layer in (model[0], model[2]):
        w = torch.linalg.vector_norm(layer.weight.grad.double())
        b = torch.linalg.vector_norm(layer.bias.grad.double())
        out.append(math.sqrt(w.item() ** 2 + b.item() ** 2))
    return out


def test_one_frame_per_optimizer_step_with_norms_loss_and_lr() -> None:
    model, optimizer, x, y = make_run()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    pending: list[Frame] = []
    expected, losses = [], []
    with Capture(model, optimizer, find_layers(model), pending.append) as capture:
        assert capture.layer_names == ("0", "2")
        for _ in range(4):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            capture.record_loss(loss)
            expected.append(expected_norms(model))
            losses.append(loss.item())
            optimizer.step()
            scheduler.step()
    frames = [p.resolve() for p in pending]
    assert [f.step for f in frames] == [0, 1, 2, 3]
    assert [f.lr for f in frames] == [0.1, 0.05, 0.025, 0.0125]
    assert [f.loss for f in frames] == pytest.approx(losses, rel=1e-7)
    for frame, norms in zip(frames, expected):
        assert frame.norms.dtype == np.float64
        np.testing.assert_allclose(frame.norms, norms, rtol=1e-6)
    assert frames[0].norms[0] != frames[1].norms[0]  # the gradients really changed
    assert pending[0].resolve() is frames[0]


def test_loss_is_nan_unless_recorded_and_is_used_once() -> None:
    model, optimizer, x, y = make_run()
    pending: list[Frame] = []
    with Capture(model, optimizer, None, pending.append) as capture:
        for i in range(3):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if i == 1:
                capture.record_loss(2.5)
            optimizer.step()
    losses = [p.resolve().loss for p in pending]
    assert math.isnan(losses[0]) and losses[1] == 2.5 and math.isnan(losses[2])


def test_gradient_accumulation_gives_one_frame_per_step() -> None:
    model, optimizer, x, y = make_run()
    pending: list[Frame] = []
    expected = []
    with Capture(model, optimizer, find_layers(model), pending.append):
        for _ in range(3):
            optimizer.zero_grad()
            for half in (x[:4], x[4:]):
                nn.functional.mse_loss(model(half), y[:4]).backward()
            expected.append(expected_norms(model))
            optimizer.step()
    frames = [p.resolve() for p in pending]
    assert [f.step for f in frames] == [0, 1, 2]
    for frame, norms in zip(frames, expected):
        np.testing.assert_allclose(frame.norms, norms, rtol=1e-6)


def test_remove_and_context_exit_stop_frames() -> None:
    model, optimizer, x, y = make_run()
    got: list[Frame] = []

    def train_step() -> None:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    capture = Capture(model, optimizer, None, got.append)
    train_step()
    capture.remove()
    capture.remove()  # twice is fine
    train_step()
    assert len(got) == 1
    with Capture(model, optimizer, None, got.append):
        train_step()
        train_step()
    train_step()
    assert [p.resolve().step for p in got] == [0, 0, 1]


def test_nothing_is_stored_on_model_or_optimizer() -> None:
    model, optimizer, x, y = make_run()
    model_keys = {name: set(vars(m)) for name, m in model.named_modules()}
    optimizer_keys = set(vars(optimizer))
    hooks_before = len(optimizer._optimizer_step_pre_hooks)
    with Capture(model, optimizer, None, lambda frame: None):
        assert len(optimizer._optimizer_step_pre_hooks) == hooks_before + 1
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert {name: set(vars(m)) for name, m in model.named_modules()} == model_keys
    assert set(vars(optimizer)) == optimizer_keys
    assert len(optimizer._optimizer_step_pre_hooks) == hooks_before


def test_explicit_step_without_hook() -> None:
    model, optimizer, x, y = make_run()
    pending: list[Frame] = []
    capture = Capture(model, None, None, pending.append, auto=False)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    norms = expected_norms(model)
    capture.step(loss=loss)
    optimizer.step()  # not hooked: no second frame
    frame = pending[0].resolve()
    assert len(pending) == 1
    assert frame.step == 0 and frame.loss == pytest.approx(loss.item(), rel=1e-7)
    assert math.isnan(frame.lr)  # no optimizer given
    np.testing.assert_allclose(frame.norms, norms, rtol=1e-6)


def test_one_fused_pass_and_one_item_for_the_cpu_loss_in_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, x, y = make_run()
    calls = {"foreach_norm": 0, "item": 0, "tolist": 0, "float": 0}
    real_norm = torch._foreach_norm
    real_item, real_tolist, real_float = torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__

    def counting(name: str, real):  # type: ignore[no-untyped-def]
        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return real(*args, **kwargs)
        return spy

    pending: list[Frame] = []
    capture = Capture(model, optimizer, None, pending.append)
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        capture.record_loss(loss)
        monkeypatch.setattr(torch, "_foreach_norm", counting("foreach_norm", real_norm))
        monkeypatch.setattr(torch.Tensor, "item", counting("item", real_item))
        monkeypatch.setattr(torch.Tensor, "tolist", counting("tolist", real_tolist))
        monkeypatch.setattr(torch.Tensor, "__float__", counting("float", real_float))
        optimizer.step()
        monkeypatch.undo()
    capture.remove()
    # one pass per step; the loss, a CPU tensor, is read with item() (no device to wait for: cheaper than
    # packing it with the norms); nothing per layer
    assert calls == {"foreach_norm": 3, "item": 3, "tolist": 0, "float": 0}
    assert len(pending) == 3


def test_failing_on_frame_is_reported_once_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    model, optimizer, x, y = make_run()
    before = [p.detach().clone() for p in model.parameters()]

    def broken(frame: object) -> None:
        raise OSError("queue gone")

    capture = Capture(model, optimizer, None, broken)
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    capture.remove()
    assert capture.errors == 3 and capture.first_error == "OSError: queue gone"
    assert [r.getMessage() for r in caplog.records] == [
        "gradient capture failed at step 0 (OSError: queue gone); training goes on without this frame"
    ]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # steps were taken


def test_capture_argument_errors() -> None:
    model, optimizer, _, _ = make_run()
    with pytest.raises(ValueError, match="optimizer is None"):
        Capture(model, None, None, print)
    with pytest.raises(TypeError, match="on_frame must be callable"):
        Capture(model, optimizer, None, "print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer must be"):
        Capture(model, "sgd", None, print)  # type: ignore[arg-type]
    capture = Capture(model, optimizer, None, print, auto=False)
    with pytest.raises(ValueError, match=r"loss must be a single number; got a tensor of shape \(2,\)"):
        capture.record_loss(torch.zeros(2))
    with pytest.raises(TypeError, match="loss must be a float"):
        capture.record_loss("low")  # type: ignore[arg-type]


def test_capture_appends_each_frame_to_a_run_log_on_the_training_thread(tmp_path: Path) -> None:
    from bridge.frames import RunInfo
    from bridge.runlog import RunLogWriter, read_run

    model, optimizer, x, y = make_run()
    path = tmp_path / "run.gbrun"
    expected, sizes = [], []
    names = tuple(layer.name for layer in find_layers(model))
    with RunLogWriter(path, RunInfo(names)) as writer, Capture(model, optimizer, None, writer.append):
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            expected.append(expected_norms(model))
            optimizer.step()
            sizes.append(writer.written)  # in the file when optimizer.step() returns: no thread, no queue
    assert sizes == [1, 2, 3, 4, 5]
    _, frames = read_run(path)
    assert [f.step for f in frames] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(np.stack([f.norms for f in frames]), expected, rtol=1e-6)


# --- mixed precision with a gradient scaler ---------------------------------------------------


def scaled_backward(model: nn.Module, scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.float16):  # float16 autocast runs on the CPU in torch >= 2.3
        out = model(x)
    assert out.dtype == torch.float16
    scaler.scale(nn.functional.mse_loss(out.float(), y)).backward()


def test_scaler_step_shows_unscaled_gradients_and_a_skipped_step_makes_no_frame() -> None:
    model, optimizer, x, y = make_run()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # backoff 0.5 after an overflow
    pending: list[Frame] = []
    expected = []
    with Capture(model, optimizer, None, pending.append):
        for step in range(3):
            optimizer.zero_grad()
            scaled_backward(model, scaler, x, y)
            scale = 2.0**10 if step < 2 else 2.0**9
            if step == 1:
                model[0].weight.grad[0, 0] = math.inf  # the scaled gradients overflowed
                before = [p.detach().clone() for p in model.parameters()]
            else:  # dividing by a power of two is exact: these are the unscaled norms
                expected.append([n / scale for n in expected_norms(model)])
            scaler.step(optimizer)
            scaler.update()
            if step == 1:
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    frames = [p.resolve() for p in pending]
    assert [f.step for f in frames] == [0, 1]  # steps count the optimizer steps taken
    np.testing.assert_allclose(np.stack([f.norms for f in frames]), expected, rtol=1e-6)
    assert 0.01 < frames[0].norms[0] < 10.0  # of the order of a float32 run's, not ~1000 times it


def test_explicit_step_after_unscale_sounds_the_overflow_the_scaler_skips() -> None:
    model, optimizer, x, y = make_run()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    pending: list[Frame] = []
    expected = []
    capture = Capture(model, optimizer, None, pending.append, auto=False)
    for step in range(2):
        optimizer.zero_grad()
        scaled_backward(model, scaler, x, y)
        if step == 1:
            model[2].bias.grad[0] = math.inf
        expected.append([n / 2.0**10 for n in expected_norms(model)])
        scaler.unscale_(optimizer)
        capture.step()
        scaler.step(optimizer)  # skips step 1; our frame is already taken
        scaler.update()
    frames = [p.resolve() for p in pending]
    assert [f.step for f in frames] == [0, 1]
    np.testing.assert_allclose(frames[0].norms, expected[0], rtol=1e-6)
    assert frames[1].norms[1] == math.inf  # an Inf alarm for the layer that overflowed
    assert frames[1].norms[0] == pytest.approx(expected[1][0], rel=1e-6)


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; this torch build or machine has none")
    return torch.device("cuda")


def expected_norms_of(grads: list[torch.Tensor]) -> list[float]:
    """``expected_norms`` from the gradients of (weight, bias, weight, bias), on any device."""
    squares = [torch.linalg.vector_norm(g.double()).item() ** 2 for g in grads]
    return [math.sqrt(squares[0] + squares[1]), math.sqrt(squares[2] + squares[3])]


def test_cuda_frames_match_host_norms_and_no_step_synchronises(cuda: torch.device) -> None:
    model, optimizer, x, y = make_run()
    model.to(cuda)
    optimizer = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1, device=cuda))
    x, y = x.to(cuda), y.to(cuda)
    pending: list[Frame] = []
    grads, losses = [], []
    with Capture(model, optimizer, None, pending.append) as capture:
        torch.cuda.set_sync_debug_mode("error")  # any host sync in a watched step raises
        try:
            for _ in range(3):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                capture.record_loss(loss)
                grads.append([p.grad.detach().clone() for p in model.parameters()])
                losses.append(loss.detach())
                optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(pending) <= 2  # the last step's frame waits for its copy: handed on by remove()
    expected = [expected_norms_of(g) for g in grads]
    losses = [float(loss) for loss in losses]
    frames = pending
    assert [f.step for f in frames] == [0, 1, 2]
    assert [f.lr for f in frames] == pytest.approx([0.1] * 3, rel=1e-7)
    assert [f.loss for f in frames] == pytest.approx(losses, rel=1e-6)
    np.testing.assert_allclose(np.stack([f.norms for f in frames]), expected, rtol=1e-5)
