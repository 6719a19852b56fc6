"""Tests for bridge.norms: per-parameter gradient norms read on the device and combined per layer.

Expected norms are worked out by hand from gradients set by hand (Pythagorean triples where possible).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from bridge.capture import Capture, PendingFrame, find_layers
from bridge.frames import Frame
from bridge.norms import REPAIR_SHARE_TO_SWITCH, REPAIRS_TO_SWITCH, STACK_MAX_NUMEL, NormReader, combine


def linear(weight: list[list[float]], bias: list[float] | None = None, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A Linear layer whose gradients are set by hand (values in the parameters do not matter)."""
    out_features, in_features = len(weight), len(weight[0])
    layer = nn.Linear(in_features, out_features, bias=bias is not None, dtype=dtype)
    layer.weight.grad = torch.tensor(weight, dtype=dtype)
    if bias is not None:
        layer.bias.grad = torch.tensor(bias, dtype=dtype)
    return layer


def read(model: nn.Module, **kwargs: object) -> list[float]:
    return NormReader(find_layers(model, **kwargs)).read().tolist()


def frame_norms(model: nn.Module) -> list[float]:
    """The norms of one frame captured by an explicit ``Capture.step()`` on the model's gradients as set."""
    pending: list[PendingFrame] = []
    Capture(model, None, None, pending.append, auto=False).step()
    return pending[0].resolve().norms.tolist()


def all_paths(model: nn.Module) -> list[list[float]]:
    """The layer norms by every way out of the reader: read(), read_squares() and a captured frame."""
    reader = NormReader(find_layers(model))
    return [reader.read().tolist(), reader.read_squares().sqrt().tolist(), frame_norms(model)]


# --- moved from the capture tests: the reader on hand-set gradients ----------------------------


def test_missing_gradient_counts_zero() -> None:
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]), nn.Linear(3, 3))  # second layer: grads None
    model[0].bias.grad = None
    assert read(model) == [5.0, 0.0]


def test_nan_and_inf_propagate() -> None:
    model = nn.Sequential(
        linear([[math.nan, 1.0]], [1.0]),
        linear([[math.inf, 1.0]], [1.0]),
        linear([[math.inf]], [math.nan]),
        linear([[3.0, 4.0]]),
    )
    norms = read(model)
    assert math.isnan(norms[0])
    assert norms[1] == math.inf
    assert math.isnan(norms[2])  # inf² + nan² is nan
    assert norms[3] == 5.0


def test_huge_float32_gradients_do_not_overflow() -> None:
    big = float(np.float32(1e30))  # the float32 nearest 1e30
    model = nn.Sequential(linear([[1e30]]), linear([[1e30]], [1e30]))
    norms = read(model)
    assert norms[0] == big
    # squaring 1e30 in float32 would overflow (max 3.4e38); in float64 it gives sqrt(2)·1e30
    assert norms[1] == pytest.approx(math.sqrt(2.0) * big, rel=1e-15)


def test_gradients_of_1e20_give_a_finite_norm_on_every_path() -> None:
    # Each element 1e20 (a float32: 100000002004087734272). Summed in float32 the squares (1e40) overflow to
    # inf; summed in float64 a (2, 2) weight gives 2e20 and a bias of 3 elements sqrt(3)·1e20.
    element = float(np.float32(1e20))
    single = nn.Sequential(linear([[1e20, 1e20], [1e20, 1e20]], [1e20, 1e20]), linear([[1e20] * 3]))
    for path in all_paths(single):  # stacked (same shapes), and one parameter per layer
        assert path == pytest.approx([element * math.sqrt(6.0), element * math.sqrt(3.0)], rel=1e-12)
    big = nn.Linear(STACK_MAX_NUMEL + 1, 1, bias=False)  # too large to stack: the fused pass itself
    big.weight.grad = torch.full_like(big.weight, 1e20)
    assert read(big) == pytest.approx([element * math.sqrt(STACK_MAX_NUMEL + 1)], rel=1e-12)
    # norms up to float64's range: 1e150 per element (float64 gradients) squares to 1e300
    wide = linear([[1e150, 1e150]], dtype=torch.float64)
    assert read(wide) == pytest.approx([1e150 * math.sqrt(2.0)], rel=1e-15)


def test_half_precision_norm_above_float16_range() -> None:
    layer = nn.Linear(3, 1, bias=False).half()
    layer.weight.grad = torch.full((1, 3), 60000.0, dtype=torch.float16)  # each element fits float16
    # sqrt(3) * 60000 = 103923.05, above float16's 65504
    assert read(layer) == pytest.approx([60000.0 * math.sqrt(3.0)], rel=1e-6)


def test_sparse_gradients_fall_back_to_per_tensor_norms() -> None:
    model = nn.Sequential(nn.Embedding(5, 2, sparse=True), linear([[3.0, 4.0]]))
    model[0](torch.tensor([1, 1, 3])).sum().backward()  # rows 1 (twice) and 3: grads 2,2 and 1,1
    assert model[0].weight.grad.is_sparse
    assert read(model) == pytest.approx([math.sqrt(4 + 4 + 1 + 1), 5.0], rel=1e-6)


def test_read_parameters_gives_each_parameter_and_its_layer() -> None:
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]), linear([[0.0, 2.0]], [0.0]))
    norms, layer_of = NormReader(find_layers(model)).read_parameters()
    # read order: the two (1, 2) weights stacked, then the two (1,) biases stacked
    assert norms.tolist() == [5.0, 2.0, 12.0, 0.0]
    assert layer_of is not None and layer_of.tolist() == [0, 1, 0, 1]
    single = nn.Sequential(linear([[3.0, 4.0]]), linear([[-7.0]]))
    norms, layer_of = NormReader(find_layers(single)).read_parameters()
    assert norms.tolist() == [5.0, 7.0] and layer_of is None  # one per layer, in layer order


def test_combine_sums_squares_per_layer() -> None:
    values = np.array([3.0, 4.0, 1e200, 1e200, math.inf, 2.0], dtype=np.float64)
    got = combine(values, np.array([0, 0, 1, 1, 2, 3]), 5)
    assert got[:2].tolist() == [5.0, math.inf]  # (1e200)² overflows float64: inf, as sqrt(inf) reads
    assert got[2:].tolist() == [math.inf, 2.0, 0.0]  # layer 4 has no parameter here: 0
    assert combine(np.array([5.0, 7.0, 9.0], dtype=np.float32), None, 2).tolist() == [5.0, 7.0]


def test_gradients_that_go_missing_or_sparse_later_are_still_read(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Embedding(5, 2, sparse=True), linear([[3.0, 4.0]]))
    model[0].weight.grad = torch.zeros(5, 2)
    model[0].weight.grad[0] = torch.tensor([6.0, 8.0])
    reader = NormReader(find_layers(model))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert reader.read().tolist() == [10.0, 5.0]  # dense: the fused pass
        model[0].weight.grad = None
        assert reader.read().tolist() == [0.0, 5.0]
        model[0](torch.tensor([1, 1, 3])).sum().backward()  # sparse now: rows 1 (twice) and 3
        assert reader.read().tolist() == pytest.approx([math.sqrt(4 + 4 + 1 + 1), 5.0], rel=1e-6)
        model[0].weight.grad = torch.full((5, 2), 0.5)  # dense again: sqrt(10 * 0.25)
        assert reader.read().tolist() == pytest.approx([math.sqrt(2.5), 5.0], rel=1e-7)
        assert reader.read().tolist() == pytest.approx([math.sqrt(2.5), 5.0], rel=1e-7)
    assert caplog.records == []  # a missing or sparse gradient is no failure of the fused pass


def test_one_pass_per_dtype_when_parameters_differ_in_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(linear([[3.0, 4.0]]), nn.Linear(1, 1, bias=False).double())
    model[1].weight.grad = torch.tensor([[-7.0]], dtype=torch.float64)
    reader = NormReader(find_layers(model))
    real = torch._foreach_norm
    seen: list[torch.dtype] = []
    monkeypatch.setattr(torch, "_foreach_norm", lambda ts, *a, **k: seen.append(ts[0].dtype) or real(ts, *a, **k))
    assert reader.read().tolist() == [5.0, 7.0]
    assert seen == [torch.float32, torch.float64]


def test_failed_fused_pass_falls_back_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no fused kernel here")

    monkeypatch.setattr(torch, "_foreach_norm", broken)
    reader = NormReader(find_layers(nn.Sequential(linear([[3.0, 4.0]], [12.0]))))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert reader.read().tolist() == [13.0]
        assert reader.read().tolist() == [13.0]
    assert len(caplog.records) == 1
    assert "no fused kernel here" in caplog.records[0].getMessage()


# --- the fast paths: same-shape stacks, one fused pass, and what makes them step aside -----------


def three_equal_layers() -> nn.Sequential:
    """Three layers of a (1, 2) weight and a (1,) bias: on a CPU, two stacks of three."""
    return nn.Sequential(
        linear([[3.0, 4.0]], [12.0]),  # sqrt(9 + 16 + 144) = 13
        linear([[2.0, 3.0]], [6.0]),  # sqrt(4 + 9 + 36) = 7
        linear([[0.0, 0.0]], [-8.0]),  # 8
    )


def spy_on_fused_pass(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, ...]]]:
    """Record the shapes of the gradients given to each ``torch._foreach_norm`` call from now on."""
    real = torch._foreach_norm
    seen: list[list[tuple[int, ...]]] = []

    def spy(tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([tuple(t.shape) for t in tensors])
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", spy)
    return seen


def test_equal_layers_are_read_by_one_stack_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    model = three_equal_layers()
    seen = spy_on_fused_pass(monkeypatch)
    norms, layer_of = NormReader(find_layers(model)).read_parameters()
    assert seen == []  # no per-tensor pass: each stack is reduced at once
    # read order: the three weights, then the three biases
    assert norms.tolist() == pytest.approx([5.0, math.sqrt(13.0), 0.0, 12.0, 6.0, 8.0], rel=1e-7)
    assert layer_of is not None and layer_of.tolist() == [0, 1, 2, 0, 1, 2]
    for path in all_paths(model):
        assert path == pytest.approx([13.0, 7.0, 8.0], rel=1e-7)
    assert read(model, params="weights") == pytest.approx([5.0, math.sqrt(13.0), 0.0], rel=1e-7)


def test_unequal_layers_mix_stacks_and_one_fused_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(
        linear([[3.0, 4.0]], [12.0]),  # 13
        linear([[2.0, 3.0, 6.0]]),  # sqrt(4 + 9 + 36) = 7; its (1, 3) weight has no twin
        linear([[1.0, 2.0]], [2.0]),  # sqrt(1 + 4 + 4) = 3
    )
    seen = spy_on_fused_pass(monkeypatch)
    norms, layer_of = NormReader(find_layers(model)).read_parameters()
    assert seen == [[(1, 3)]]
    # read order: the lone (1, 3) weight, then the (1, 2) weights, then the (1,) biases
    assert layer_of is not None and layer_of.tolist() == [1, 0, 2, 0, 2]
    assert norms.tolist() == pytest.approx([7.0, 5.0, math.sqrt(5.0), 12.0, 2.0], rel=1e-7)
    for path in all_paths(model):
        assert path == pytest.approx([13.0, 7.0, 3.0], rel=1e-7)


def test_distinct_shapes_are_one_fused_pass_in_layer_order(monkeypatch: pytest.MonkeyPatch) -> None:
    n = STACK_MAX_NUMEL + 1  # a weight too large to stack, after small ones that have no twin
    model = nn.Sequential(linear([[3.0, 4.0]], [12.0]), nn.Linear(n, 2))  # 13 and sqrt(2n + 25)
    model[1].weight.grad, model[1].bias.grad = torch.ones(2, n), torch.tensor([3.0, 4.0])
    seen = spy_on_fused_pass(monkeypatch)
    norms, layer_of = NormReader(find_layers(model)).read_parameters()
    assert seen == [[(1, 2), (1,), (2, n), (2,)]]
    assert norms.tolist() == pytest.approx([5.0, 12.0, math.sqrt(2.0 * n), 5.0], rel=1e-7)
    assert layer_of is not None and layer_of.tolist() == [0, 0, 1, 1]
    for path in all_paths(model):
        assert path == pytest.approx([13.0, math.sqrt(2.0 * n + 25.0)], rel=1e-7)


def test_large_gradients_are_not_copied_into_a_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    n = STACK_MAX_NUMEL + 1
    model = nn.Sequential(nn.Linear(n, 1), nn.Linear(n, 1))
    model[0].weight.grad, model[0].bias.grad = torch.full((1, n), 2.0), torch.tensor([3.0])
    model[1].weight.grad, model[1].bias.grad = torch.full((1, n), 1.0), torch.tensor([4.0])
    seen = spy_on_fused_pass(monkeypatch)
    assert read(model) == pytest.approx([math.sqrt(4.0 * n + 9.0), math.sqrt(n + 16.0)], rel=1e-7)
    assert seen == [[(1, n), (1, n)]]  # the weights one by one in the fused pass; the biases stacked


def test_missing_gradient_in_a_stack_counts_zero_until_it_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = three_equal_layers()
    model[1].bias.grad = None
    reader = NormReader(find_layers(model))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert reader.read().tolist() == pytest.approx([13.0, math.sqrt(13.0), 8.0], rel=1e-7)
        assert frame_norms(model) == pytest.approx([13.0, math.sqrt(13.0), 8.0], rel=1e-7)
        model[1].bias.grad = torch.tensor([6.0])
        assert reader.read().tolist() == pytest.approx([13.0, 7.0, 8.0], rel=1e-7)
        seen = spy_on_fused_pass(monkeypatch)
        assert reader.read().tolist() == pytest.approx([13.0, 7.0, 8.0], rel=1e-7)
    # back on the stacks: the gradients are no longer looked at one by one; only the all-zero (1, 2) weight
    # is read again in float64, as any norm below FLOAT32_TRUSTED is (it may be a vanishing one)
    assert seen == [[(1, 2)]]
    assert caplog.records == []  # a missing gradient is no failure of the fused pass


def test_sparse_gradients_in_a_stack_are_read_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Embedding(3, 2, sparse=True), nn.Embedding(3, 2, sparse=True))
    model[0](torch.tensor([0, 0, 2])).sum().backward()  # row 0 twice: 2, 2; row 2: 1, 1
    model[1](torch.tensor([1])).sum().backward()  # row 1: 1, 1
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for path in all_paths(model):
            assert path == pytest.approx([math.sqrt(4 + 4 + 1 + 1), math.sqrt(2.0)], rel=1e-7)
        model[1].weight.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])  # dense beside a sparse one
        for path in all_paths(model):
            assert path == pytest.approx([math.sqrt(10.0), 5.0], rel=1e-7)
    assert caplog.records == []


def test_half_and_bfloat16_stacks_sum_in_float32() -> None:
    # 60000 is a float16 (a multiple of 32); sqrt(3) * 60000 = 103923.05 is above float16's largest, 65504
    half = nn.Sequential(linear([[6e4, 6e4, 6e4]], dtype=torch.float16), linear([[3.0, 4.0, 0.0]], dtype=torch.float16))
    for path in all_paths(half):
        assert path == pytest.approx([6e4 * math.sqrt(3.0), 5.0], rel=1e-6)
    brain = nn.Sequential(linear([[3.0, 4.0]], [12.0], dtype=torch.bfloat16),
                          linear([[6.0, 8.0]], [0.0], dtype=torch.bfloat16))
    for path in all_paths(brain):
        assert path == [13.0, 10.0]


def test_stacks_of_each_dtype_in_their_own_group() -> None:
    model = nn.Sequential(
        linear([[3.0, 4.0]], [12.0]),  # 13
        linear([[6.0, 8.0]], [0.0]),  # 10
        linear([[2.0, 3.0]], [6.0], dtype=torch.float64),  # 7
        linear([[0.0, 0.0]], [-8.0], dtype=torch.float64),  # 8
    )
    assert NormReader(find_layers(model)).read_parameters()[1] is None  # two groups: the layers' norms
    for path in all_paths(model):
        assert path == pytest.approx([13.0, 10.0, 7.0, 8.0], rel=1e-7)


def test_stacked_norms_equal_each_gradients_own_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(6)], nn.Linear(16, 3))
    model(torch.randn(4, 16)).square().sum().backward()
    # the 2019 post's method: each parameter's own norm, then sqrt of the sum of squares per layer
    expected = [math.sqrt(float(m.weight.grad.norm()) ** 2 + float(m.bias.grad.norm()) ** 2) for m in model]
    for path in all_paths(model):
        assert path == pytest.approx(expected, rel=1e-6)


def test_a_float32_sum_that_overflows_on_a_cpu_is_read_again_in_float64_on_every_capture_path() -> None:
    # the fast CPU read sums float32 gradients in float32: 1e20 squared overflows there, and the host reads
    # that norm again in float64; a gradient that holds Inf stays an Inf alarm
    element = float(np.float32(1e20))
    model = nn.Sequential(linear([[1e20, 1e20], [1e20, 1e20]]), linear([[3.0, 4.0]]), linear([[math.inf, 1.0]]))
    reader = NormReader(find_layers(model))
    assert reader.needs_repair
    raw, layer_of = reader.read_parameters()
    assert layer_of is None and raw.dtype == torch.float32 and raw.tolist()[1:] == [5.0, math.inf]
    assert raw.tolist()[0] == math.inf  # what float32 gives before the host reads it again
    assert reader.repair(raw.numpy()).tolist() == [element * 2.0, 5.0, math.inf]
    with_tensor_loss: list[Frame] = []
    capture = Capture(model, None, None, with_tensor_loss.append, auto=False)
    capture.step(loss=torch.tensor(0.5))  # a loss tensor takes the packed path
    assert with_tensor_loss[0].norms.tolist() == [element * 2.0, 5.0, math.inf]
    assert with_tensor_loss[0].loss == 0.5
    assert frame_norms(model) == [element * 2.0, 5.0, math.inf]


def test_a_nan_before_an_overflowed_float32_sum_does_not_hide_it_from_the_repair() -> None:
    # NaN compares false with everything: the repair's quick check must not take [NaN, +Inf, 5] for
    # norms in range; the overflowed one is read again, the NaN stays an alarm
    element = float(np.float32(1e20))
    model = nn.Sequential(linear([[math.nan, 1.0]]), linear([[1e20, 1e20], [1e20, 1e20]]), linear([[3.0, 4.0]]))
    raw, _ = NormReader(find_layers(model)).read_parameters()
    assert np.isnan(raw.numpy()).sum() == 1 and np.isposinf(raw.numpy()).sum() == 1  # before the repair
    for path in all_paths(model):
        assert math.isnan(path[0]) and path[1:] == pytest.approx([element * 2.0, 5.0], rel=1e-12)


def test_a_vanishing_float32_gradient_reads_its_norm_not_zero() -> None:
    # elements of 1e-24 square to 1e-48, below float32's smallest (1.4e-45): a float32 sum gives 0; the
    # host reads such a norm again in float64: sqrt(4) x 1e-24
    tiny = float(np.float32(1e-24))
    model = nn.Sequential(linear([[1e-24, 1e-24], [1e-24, 1e-24]]), linear([[3.0, 4.0]]))
    raw, _ = NormReader(find_layers(model)).read_parameters()
    assert raw.tolist() == [0.0, 5.0]
    for path in all_paths(model):
        assert path == pytest.approx([2.0 * tiny, 5.0], rel=1e-12)


def test_a_reader_whose_float32_norms_mostly_vanish_sums_in_float64_after_three_such_reads() -> None:
    # 2 of 3 norms below FLOAT32_TRUSTED: more than 1 in REPAIR_SHARE_TO_SWITCH, so after REPAIRS_TO_SWITCH
    # (3) reads in a row the fast read sums in float64, and gives the same norms with nothing to repair
    assert (REPAIR_SHARE_TO_SWITCH, REPAIRS_TO_SWITCH) == (8, 3)
    tiny = float(np.float32(1e-24))
    model = nn.Sequential(linear([[1e-24, 1e-24]]), linear([[1e-24, 1e-24]]), linear([[3.0, 4.0]]))
    reader = NormReader(find_layers(model))
    expected = [math.sqrt(2.0) * tiny, math.sqrt(2.0) * tiny, 5.0]
    dtypes = []
    for _ in range(4):
        raw, _ = reader.read_parameters()
        dtypes.append(raw.dtype)
        assert reader.repair(raw.numpy()).tolist() == pytest.approx(expected, rel=1e-12)
    assert dtypes == [torch.float32] * 3 + [torch.float64]
    assert not reader.needs_repair
    assert reader.read_parameters()[0].tolist() == pytest.approx(expected, rel=1e-12)


def test_a_reader_that_repairs_one_norm_in_many_keeps_summing_in_float32() -> None:
    # 1 of 8 norms below FLOAT32_TRUSTED is not more than 1 in 8: the float32 read stays, and repairs it
    tiny = float(np.float32(1e-24))
    model = nn.Sequential(linear([[1e-24, 1e-24]]), *[linear([[3.0, 4.0]]) for _ in range(7)])
    reader = NormReader(find_layers(model))
    for _ in range(5):
        raw, _ = reader.read_parameters()
        assert raw.dtype == torch.float32
        assert reader.repair(raw.numpy()).tolist() == pytest.approx([math.sqrt(2.0) * tiny] + [5.0] * 7, rel=1e-12)
    assert reader.needs_repair


def test_every_group_of_a_mixed_reader_reads_its_own_doubtful_norms_again() -> None:
    # a float64 layer first, then a float32 one whose 1e20 elements overflow a float32 sum: two groups
    element = float(np.float32(1e20))
    model = nn.Sequential(linear([[3.0, 4.0]], dtype=torch.float64), linear([[1e20, 1e20]]))
    for path in all_paths(model):
        assert path == pytest.approx([5.0, element * math.sqrt(2.0)], rel=1e-12)
