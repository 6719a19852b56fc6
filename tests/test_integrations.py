"""Lightning and Hugging Face callbacks: short real training runs on CPU, checked against the gradients the
optimizer saw (recorded by a second callback at the same event) and the losses the model computed."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import types
import wave
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from bridge.errors import PresetError
from bridge.runlog import read_run

pl = pytest.importorskip("lightning.pytorch", reason='Lightning not installed: pip install "gradbridge[lightning]"')
transformers = pytest.importorskip(
    "transformers", reason='transformers not installed: pip install "gradbridge[huggingface]"')

from bridge.integrations.huggingface import GradbridgeTrainerCallback
from bridge.integrations.lightning import GradbridgeCallback

BATCHES = 8  #: training batches per epoch in every run below
BATCH_SIZE = 4
PERONE_SAMPLES_PER_STEP = 2 * 441 + 882  #: perone2019, 2 layers: two 10 ms tones and 20 ms of silence


def layer_norms(modules: dict[str, nn.Module]) -> list[float]:
    """Each module's gradient norm, computed here on its own: sqrt of the sum of squared entries, float64."""
    return [math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in m.parameters())) for m in modules.values()]


def data(n: int = BATCHES * BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def check_files(tmp_path: Path, steps: int, names: list[str]) -> None:
    """The WAV (perone2019) and MIDI file of a ``steps``-step run of two layers read back as expected."""
    with wave.open(str(tmp_path / "run.wav")) as f:
        assert (f.getnchannels(), f.getframerate()) == (1, 44100)
        assert f.getnframes() == steps * PERONE_SAMPLES_PER_STEP
    midi = mido.MidiFile(str(tmp_path / "run.mid"))
    assert [t.name for t in midi.tracks[1:]] == names
    ons = [m for t in midi.tracks for m in t if m.type == "note_on" and m.velocity > 0]
    assert len(ons) == 2 * steps  # one note per layer per step


# ---------------------------------------------------------------- Lightning


def assert_one_frame_per_step(callback: Any, run_log: Path, layer_names: tuple[str, ...], steps: int,
                              norms: list[list[float]], losses: np.ndarray) -> list[Any]:
    """The callback's run: every one of ``steps`` frames handed on and in the run log, with the reference's
    norms, ``losses`` and the learning rate 0.1 the tests train with; returns the frames."""
    assert callback.stats is not None and (callback.stats.frames_in, callback.stats.frames_done) == (steps, steps)
    info, frames = read_run(run_log)
    assert info.layer_names == layer_names
    assert [f.step for f in frames] == list(range(steps))
    np.testing.assert_allclose([f.norms for f in frames], norms, rtol=1e-6)
    np.testing.assert_allclose([f.loss for f in frames], losses, rtol=1e-6)
    assert [f.lr for f in frames] == pytest.approx([0.1] * steps)
    return frames


class TinyModule(pl.LightningModule):  # type: ignore[misc,name-defined]
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.losses: list[float] = []
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise KeyboardInterrupt
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LightningReference(pl.Callback):  # type: ignore[misc,name-defined]
    """Records each optimizer step's layer norms, the same event the callback under test uses."""

    def __init__(self) -> None:
        self.norms: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.norms.append(layer_norms({"net.0": pl_module.net[0], "net.2": pl_module.net[2]}))


def fit(tmp_path: Path, callback: GradbridgeCallback, accumulate: int = 1, module: TinyModule | None = None,
        **trainer_options: Any) -> tuple[TinyModule, LightningReference, Any]:
    module = module or TinyModule()
    reference = LightningReference()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accumulate_grad_batches=accumulate, callbacks=[callback, reference], **trainer_options)
    x, y = data()
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, num_workers=0))
    return module, reference, trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_one_frame_per_optimizer_step_with_the_norms_and_loss_of_that_step(
        tmp_path: Path, accumulate: int) -> None:
    callback = GradbridgeCallback(mapping="perone2019", record=tmp_path / "run.gbrun", wav=tmp_path / "run.wav",
                                  midi_file=tmp_path / "run.mid", announce=None)
    module, reference, trainer = fit(tmp_path, callback, accumulate, gradient_clip_val=0.01)
    steps = BATCHES // accumulate
    assert trainer.global_step == steps
    assert callback.watch is None  # closed by on_fit_end
    # Lightning divides each batch's loss by the accumulation count: the step's loss is the batches' mean
    frames = assert_one_frame_per_step(callback, tmp_path / "run.gbrun", ("net.0", "net.2"), steps,
                                       reference.norms,
                                       np.asarray(module.losses).reshape(steps, accumulate).mean(axis=1))
    # Lightning clips after the event: the norms heard are the raw ones, far above the clipping limit
    assert min(float(np.linalg.norm(f.norms)) for f in frames) > 0.1
    check_files(tmp_path, steps, ["net.0", "net.2"])


def test_lightning_loss_and_norms_come_without_the_amp_loss_scale(tmp_path: Path) -> None:
    from lightning.pytorch.plugins import MixedPrecision

    callback = GradbridgeCallback(record=tmp_path / "run.gbrun", announce=None)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    module, reference, _ = fit(tmp_path, callback, 2, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    _, frames = read_run(tmp_path / "run.gbrun")
    assert scaler.get_scale() == 1024.0  # the scale stayed in force for the whole run
    # backward saw each loss x 1024; the frames carry the step's mean loss and the unscaled gradients
    np.testing.assert_allclose([f.loss for f in frames], np.asarray(module.losses).reshape(4, 2).mean(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose([f.norms for f in frames], reference.norms, rtol=1e-6)
    assert max(float(np.linalg.norm(f.norms)) for f in frames) < 10.0  # not 1024 times the usual ~1


def test_lightning_ctrl_c_still_finishes_every_file(tmp_path: Path) -> None:
    callback = GradbridgeCallback(mapping="perone2019", record=tmp_path / "run.gbrun", wav=tmp_path / "run.wav",
                                  midi_file=tmp_path / "run.mid", announce=None)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful shutdown and exit(1)
            fit(tmp_path, callback, module=TinyModule(fail_at=3))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C during its shutdown
    assert callback.watch is None
    _, frames = read_run(tmp_path / "run.gbrun")
    assert len(frames) == 3  # batches 0, 1 and 2 were stepped
    check_files(tmp_path, 3, ["net.0", "net.2"])


def test_lightning_other_ranks_stay_silent(tmp_path: Path) -> None:
    callback = GradbridgeCallback(record=tmp_path / "run.gbrun", announce=None)
    rank1 = types.SimpleNamespace(is_global_zero=False, optimizers=[])
    module = TinyModule()
    callback.on_fit_start(rank1, module)
    callback.on_before_backward(rank1, module, torch.tensor(1.0))
    callback.on_before_optimizer_step(rank1, module, torch.optim.SGD(module.parameters(), lr=0.1))
    callback.on_fit_end(rank1, module)
    assert callback.watch is None and callback.stats is None
    assert not (tmp_path / "run.gbrun").exists()


def test_options_are_checked_when_the_callback_is_made() -> None:
    with pytest.raises(TypeError, match="wavv.*allowed are the options of bridge.watch: .*wav"):
        GradbridgeCallback(wavv="run.wav")
    with pytest.raises(TypeError, match="auto is set by the callback"):
        GradbridgeTrainerCallback(auto=True)
    with pytest.raises(PresetError, match="no-such-preset"):
        GradbridgeCallback(mapping="no-such-preset")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        GradbridgeTrainerCallback(model="bert")


# ---------------------------------------------------------------- Hugging Face


class TinyConfig(transformers.PretrainedConfig):  # type: ignore[misc,name-defined]
    model_type = "gradbridge-tiny"


class TinyModel(transformers.PreTrainedModel):  # type: ignore[misc,name-defined]
    """Two linear layers returning a ``loss`` like any transformers model; records its training losses."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.losses: list[float] = []

    def _init_weights(self, module: nn.Module) -> None:
        """Keep PyTorch's own initialisation (seeded above)."""

    def logits_and_loss(self, x: torch.Tensor, labels: torch.Tensor | None, reduction: str = "mean",
                        divisor: Any = 1) -> Any:
        logits = self.fc2(F.relu(self.fc1(x)))
        loss = None if labels is None else F.cross_entropy(logits, labels, reduction=reduction) / divisor
        if loss is not None and self.training and torch.is_grad_enabled():
            self.losses.append(float(loss.detach()))
        return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.logits_and_loss(x, labels)


class TinyTokenModel(TinyModel):
    """Accepts the Trainer's loss kwargs: its loss is a sum over the batch divided by the step's item count."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        count = kwargs.get("num_items_in_batch")
        return self.logits_and_loss(x, labels, "sum", count) if count is not None else self.logits_and_loss(x, labels)


class HFReference(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Records each optimizer step's layer norms, the same event the callback under test uses."""

    def __init__(self) -> None:
        self.norms: list[list[float]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.norms.append(layer_norms({"fc1": model.fc1, "fc2": model.fc2}))


def train_hf(tmp_path: Path, callback: GradbridgeTrainerCallback, accumulate: int = 1,
             model_class: type[TinyModel] = TinyModel, max_grad_norm: float = 0.0,
             learning_rate: float = 0.1) -> tuple[Any, HFReference, Any]:
    """Train for one epoch; the Trainer logs (``trainer.state.log_history``) every step."""
    model = model_class(TinyConfig())
    reference = HFReference()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1,
        gradient_accumulation_steps=accumulate, learning_rate=learning_rate, lr_scheduler_type="constant",
        optim="sgd", max_grad_norm=max_grad_norm, report_to=[], save_strategy="no", logging_strategy="steps",
        logging_steps=1, use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        seed=0)
    x, y = data()
    dataset = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback, reference])
    trainer.train()
    return model, reference, trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_hugging_face_one_frame_per_optimizer_step_with_the_norms_and_loss_of_that_step(
        tmp_path: Path, accumulate: int) -> None:
    callback = GradbridgeTrainerCallback(mapping="perone2019", record=tmp_path / "run.gbrun",
                                         wav=tmp_path / "run.wav", midi_file=tmp_path / "run.mid", announce=None)
    model, reference, trainer = train_hf(tmp_path, callback, accumulate)
    steps = BATCHES // accumulate
    assert trainer.state.global_step == steps
    assert callback.watch is None  # closed by on_train_end
    assert_one_frame_per_step(callback, tmp_path / "run.gbrun", ("fc1", "fc2"), steps, reference.norms,
                              np.asarray(model.losses).reshape(steps, accumulate).mean(axis=1))
    check_files(tmp_path, steps, ["fc1", "fc2"])


def logged_grad_norms(trainer: Any) -> list[float]:
    """The pre-clip total gradient norm the Trainer itself logged at each step."""
    return [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_hugging_face_hears_the_norms_before_clipping_the_trainers_own_grad_norm(tmp_path: Path,
                                                                                 accumulate: int) -> None:
    callback = GradbridgeTrainerCallback(record=tmp_path / "run.gbrun", announce=None)
    model, reference, trainer = train_hf(tmp_path, callback, accumulate, TinyTokenModel, max_grad_norm=0.05,
                                         learning_rate=1.0)
    steps = BATCHES // accumulate
    _, frames = read_run(tmp_path / "run.gbrun")
    assert len(frames) == steps
    # each micro-batch loss is its share of the step's summed loss: the step's loss is their sum
    np.testing.assert_allclose([f.loss for f in frames],
                               np.asarray(model.losses).reshape(steps, accumulate).sum(axis=1), rtol=1e-6)
    totals = logged_grad_norms(trainer)
    assert len(totals) == steps and min(totals) > 0.05  # every step clipped: the Trainer would flatten them all
    # the total norm heard is the pre-clip norm the Trainer logged, not max_grad_norm
    np.testing.assert_allclose([float(np.linalg.norm(f.norms)) for f in frames], totals, rtol=1e-6)
    # global clipping scales every layer by max_norm / (total + 1e-6) (torch's clip_grad_norm_): undone, the
    # layers the optimizer saw are the layers heard
    scale = [0.05 / (total + 1e-6) for total in totals]
    np.testing.assert_allclose([f.norms for f in frames], np.asarray(reference.norms) / np.asarray(scale)[:, None],
                               rtol=1e-5)
    assert callback.stats is not None and callback.stats.frames_in == steps


def test_hugging_face_measures_the_model_given_and_skips_other_processes(tmp_path: Path) -> None:
    probe = TinyModel(TinyConfig())
    callback = GradbridgeTrainerCallback(model=probe.fc2, record=tmp_path / "part.gbrun", announce=None)
    model, _, _ = train_hf(tmp_path, callback)
    info, frames = read_run(tmp_path / "part.gbrun")
    assert info.layer_names == ("Linear",)  # the root module of the measured part is named by its class
    # probe.fc2 is not trained by this Trainer: its gradient stays empty, so every norm is 0
    assert [list(f.norms) for f in frames] == [[0.0]] * BATCHES

    silent = GradbridgeTrainerCallback(record=tmp_path / "rank1.gbrun", announce=None)
    state = types.SimpleNamespace(is_world_process_zero=False)
    silent.on_train_begin(None, state, None, model=model, optimizer=None)
    silent.on_pre_optimizer_step(None, state, None, model=model)
    silent.on_train_end(None, state, None, model=model)
    assert silent.stats is None and not (tmp_path / "rank1.gbrun").exists()


# ---------------------------------------------------------------- imports


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_importing_the_package_imports_no_framework() -> None:
    done = run_python(
        "import sys, bridge.integrations\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'torch') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("blocked, module, extra", [
    (("lightning", "pytorch_lightning"), "bridge.integrations.lightning", "lightning"),
    (("transformers",), "bridge.integrations.huggingface", "huggingface"),
])
def test_a_missing_framework_names_the_extra_to_install(blocked: tuple[str, ...], module: str, extra: str) -> None:
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)  # None in sys.modules: not importable
    done = run_python(f"import sys\n{block}import {module}\n")
    assert done.returncode == 1
    assert "ImportError: " in done.stderr
    assert f'pip install "gradbridge[{extra}]"' in done.stderr
