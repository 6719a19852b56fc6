"""The guard ``.ci/run`` turns on: a skip for something CI installs fails there (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SKIPPING = '''
import pytest

def test_needs_a_program():
    pytest.skip("frobnicate is not installed (Debian package frobnicate)")

def test_needs_a_gpu():
    pytest.skip("needs a CUDA device; this torch build or machine has none")
'''
ROOT = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "GRADBRIDGE_REQUIRE_PEERS"}
    if require:
        env["GRADBRIDGE_REQUIRE_PEERS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_skipping.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_in_ci_a_skip_for_an_installable_program_fails_and_one_for_a_gpu_stays_a_skip(tmp_path: Path) -> None:
    ran = run_pytest(tmp_path, require=True)
    assert ran.returncode == 1, ran.stdout
    assert "1 failed, 1 skipped" in ran.stdout
    assert "FAILED" in ran.stdout and "test_needs_a_program" in ran.stdout


def test_outside_ci_both_are_skips(tmp_path: Path) -> None:
    ran = run_pytest(tmp_path, require=False)
    assert ran.returncode == 0, ran.stdout
    assert "2 skipped" in ran.stdout
