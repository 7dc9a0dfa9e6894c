"""Every kind of mistake in a target file: exit 2, ONE line naming file and key, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BROKEN = sorted((Path(__file__).parent / "cases" / "broken").glob("*.yaml"))


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect-key: "), f"{path} must start with '# expect-key: KEY'"
    return first.split(": ", 1)[1].strip()


def test_there_are_at_least_15_kinds_of_mistake():
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_target_gives_one_line_exit_2_and_no_output(path: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "render", "--target", str(path), "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert str(path) in line, line
    key = expected_key(path)
    assert f": {key}: " in line, f"expected key {key!r} in: {line}"
    assert not out.exists(), "nothing may be written for a bad target"
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_a_good_target_file_passes_the_same_path(tmp_path: Path):
    """The harness itself can fail the other way: a valid file renders and exits 0."""
    good = Path(__file__).resolve().parents[1] / "targets" / "cpu.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "render", "--target", str(good), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").is_dir()
