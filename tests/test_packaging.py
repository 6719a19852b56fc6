"""The built wheel carries the presets and the page's files: presets load by name, and the page server finds
its static files, after a regular, non-editable install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_presets_load_by_name_from_an_installed_wheel(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheels = list((tmp_path / "dist").glob("gradbridge-*.whl"))
    assert len(wheels) == 1
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheels[0])], check=True, capture_output=True, timeout=300)
    probe = (
        "import bridge, bridge.presets as p, bridge.mapping as m; "
        "print(bridge.__file__); print(','.join(p.builtin_names())); "
        "print(m.Mapping.load('pentatonic').preset.scale); "
        "from importlib import resources; "
        "print(','.join(sorted(f.name for f in (resources.files('bridge.serve') / 'static').iterdir())))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site))  # the wheel's copy, not the checkout
    assert lines[1] == "daw,pentatonic,perone2019"
    assert lines[2] == "major_pentatonic"
    assert lines[3] == "app.js,decode.js,index.html,player.js,plots.js,store.js,style.css,synth-worklet.js"
    assert (site / "bridge" / "py.typed").is_file()
