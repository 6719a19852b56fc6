"""A real training run heard live: MIDI through JACK to jack_midi_dump, OSC to liblo's oscdump, then Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.runlog import read_run
from tests.conftest import MidiDump

CHILD = """
import sys, time, torch
from torch import nn
import bridge
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
with bridge.watch(model, optimizer, mapping="daw", record=sys.argv[1], midi=sys.argv[2], midi_api="jack",
                  osc=sys.argv[3], announce=None) as w:
    for step in range(100000):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        loss.backward()
        w.record_loss(loss)
        optimizer.step()
        while w.stats.frames_done < step + 1:
            time.sleep(0.0005)
        print(step, flush=True)
        time.sleep(0.02)   # a step every ~20 ms: six or so to a tick of the clock
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("oscdump") is None, reason="oscdump not installed (Debian package liblo-tools)")
def test_ctrl_c_mid_run_leaves_no_hanging_note_and_a_complete_log(midi_dump: Callable[..., MidiDump],
                                                                   tmp_path: Path) -> None:
    dump = midi_dump()
    osc_port = free_udp_port()
    osc_log = tmp_path / "oscdump.txt"
    with open(osc_log, "wb") as out:
        oscdump = subprocess.Popen(["oscdump", "-L", str(osc_port)], stdout=out, stderr=subprocess.DEVNULL)
    run = tmp_path / "run.gbrun"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), dump.port, f"127.0.0.1:{osc_port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert child.stdout is not None
        printed = -1
        for line in child.stdout:
            printed = int(line)
            if printed >= 15:
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        time.sleep(0.3)  # let the last datagrams land
        oscdump.terminate()
        oscdump.wait(timeout=5)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    _, frames = read_run(run)
    steps = [f.step for f in frames]
    assert steps == list(range(len(steps))) and len(steps) >= printed + 1

    # MIDI: 3 layers on channels 1-3; every note on has its note off; All Notes Off on each channel at the end
    messages = [m for _, m in dump.wait_for(lambda ms: sum(m[:2] == (0xB0 | c, 123) for m in ms for c in (0, 1, 2)) == 3)]
    ons = Counter((m[0] & 0x0F, m[1]) for m in messages if m[0] & 0xF0 == 0x90 and m[2] > 0)
    offs = Counter((m[0] & 0x0F, m[1]) for m in messages
                   if m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0))
    assert ons == offs
    assert {channel for channel, _ in ons} == {0, 1, 2}
    for channel in (0, 1, 2):
        last_note = max(i for i, m in enumerate(messages) if m[0] & 0x0F == channel and m[0] & 0xE0 == 0x80)
        assert messages.index((0xB0 | channel, 123, 0)) > last_note

    # OSC, decoded by a program we did not write (oscdump -L prints "TIMETAG ADDRESS TYPES ARGS...", one line
    # per message): daw ticks on sixteenth notes at 120 BPM, each tick the loudest of the steps since the
    # last; its /step names the first and last of them, and the ticks leave no step out
    messages_osc = [line.split() for line in osc_log.read_text().splitlines()]
    ticks = [(int(m[3]), int(m[9]), int(m[10])) for m in messages_osc if m[1:3] == ["/gradbridge/step", "ifffifii"]]
    assert ticks and ticks[0][1] == 0
    assert all(step == last and first <= last for step, first, last in ticks)
    assert all(later[1] == earlier[2] + 1 for earlier, later in zip(ticks, ticks[1:]))
    assert ticks[-1][2] >= printed  # every step training handled was in a tick
    assert len(ticks) < printed + 1  # a step every ~20 ms: several steps to a tick
    assert sum(m[1:3] == ["/gradbridge/layer", "isfffiiffff"] for m in messages_osc) == 3 * len(ticks)
    # one clock for both: every tick OSC sent, the MIDI port played, a note on each layer's channel
    assert sum(ons.values()) == 3 * len(ticks)
