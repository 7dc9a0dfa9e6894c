"""A non-editable install carries targets, templates and compose files and works from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0 and "hatchling" in proc.stderr:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
            capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("imgforge-*.whl")
    return whl


def test_wheel_carries_targets_templates_compose_and_facts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in (REPO / "targets").glob("*.yaml"):
        assert f"builder/_data/targets/{target.name}" in names
    for tpl in (REPO / "compose").glob("*.j2"):
        assert f"builder/_data/compose/{tpl.name}" in names
    for tpl in (REPO / "images").rglob("*"):
        if tpl.is_file():
            assert f"builder/_data/images/{tpl.relative_to(REPO / 'images')}" in names
    assert "builder/facts/gpus.json" in names
    assert any(n.startswith("builder/facts/vllm_flags/") for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "imgforge = builder.cli:main" in entry


def test_installed_wheel_renders_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "IMGFORGE_STATE": str(tmp_path / "state")}
    # PYTHONPATH puts the wheel's files before this interpreter's site-packages, which only
    # supply the dependencies (and may hold another copy of imgforge: the assert rules it out).
    code = (
        "import builder, builder.paths as p;"
        f"assert builder.__file__.startswith({str(target)!r}), builder.__file__;"
        "assert (p.targets_dir() / 'cpu.yaml').is_file(), p.targets_dir();"
        "from builder.cli import main; main(['render', '--target', 'dgx-spark', '--unlocked', '-o', 'out'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "out" / "dgx-spark" / "compose.yaml").is_file()
