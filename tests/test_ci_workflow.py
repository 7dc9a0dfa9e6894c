"""ci/publish.yml: a valid GitHub Actions workflow whose steps are imgforge commands that exist."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "ci" / "publish.yml"
SETUP_RUNS = {"sudo scripts/install-host-tools.sh", "pip install ."}
SETUP_ACTIONS = {"actions/checkout", "actions/setup-python"}
EXPR = re.compile(r"\$\{\{.*?\}\}")


def load(text: str | None = None) -> dict:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on"
    data = yaml.load(text if text is not None else WORKFLOW.read_text(), Loader=yaml.BaseLoader)
    return data


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def commands(wf: dict) -> list[str]:
    """Each shell command of every run: block (continuation lines joined, comments dropped)."""
    out = []
    for s in steps(wf):
        if "run" not in s:
            continue
        text = s["run"].replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out += [c.strip() for c in re.split(r"&&|;", line) if c.strip()]
    return out


@lru_cache(maxsize=None)
def help_text(verb: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "builder", verb, "--help"], capture_output=True, text=True, cwd=ROOT)
    return p.returncode, p.stdout + p.stderr


def check_imgforge(cmd: str) -> list[str]:
    """Problems with one `imgforge ...` command line: unknown verb, unknown option."""
    argv = shlex.split(EXPR.sub("X", cmd))
    assert argv[0] == "imgforge"
    verb = argv[1]
    rc, text = help_text(verb)
    if rc != 0 or "Usage:" not in text:
        return [f"{cmd}: no verb {verb!r} in the CLI"]
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    problems = []
    for tok in argv[2:]:
        if tok.startswith("-"):
            opt = tok.split("=", 1)[0]
            if opt not in listed:
                problems.append(f"{cmd}: imgforge {verb} has no option {opt}")
    return problems


def lint(wf: dict) -> list[str]:
    problems = []
    for s in steps(wf):
        if "uses" in s:
            action = s["uses"].split("@")[0]
            if action not in SETUP_ACTIONS:
                problems.append(f"step {s.get('name')!r} uses {action}: steps are imgforge commands (plus setup)")
    for c in commands(wf):
        if c.startswith("imgforge "):
            problems += check_imgforge(c)
        elif c not in SETUP_RUNS:
            problems.append(f"{c!r} is neither an imgforge command nor setup")
    return problems


# --------------------------------------------------------------------------- validity

def schema_check(path: Path) -> subprocess.CompletedProcess | None:
    exe = shutil.which("check-jsonschema") or (str(Path(sys.executable).parent / "check-jsonschema")
                                                if (Path(sys.executable).parent / "check-jsonschema").exists() else None)
    if exe is None:
        return None
    return subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True)


def structural(wf: dict) -> list[str]:
    """What GitHub requires of a workflow, for machines without check-jsonschema."""
    problems = []
    if "on" not in wf:
        problems.append("no `on:` trigger")
    if not isinstance(wf.get("jobs"), dict) or not wf["jobs"]:
        problems.append("no jobs")
        return problems
    for name, job in wf["jobs"].items():
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
            problems.append(f"job id {name!r}")
        if "runs-on" not in job:
            problems.append(f"job {name}: no runs-on")
        for s in job.get("steps", []):
            if ("run" in s) == ("uses" in s):
                problems.append(f"job {name}: step {s.get('name')!r} needs exactly one of run/uses")
    return problems


def test_workflow_is_valid():
    proc = schema_check(WORKFLOW)
    if proc is not None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert structural(load()) == []


@pytest.mark.parametrize("breakage", [
    lambda t: t.replace("    runs-on: ${{ matrix.runner }}\n", ""),
    lambda t: t.replace("        uses: actions/checkout@v4", "        uses: actions/checkout@v4\n        run: echo both"),
    lambda t: t.replace("    timeout-minutes: 240", "    timeout-minutes: 240\n    no-such-key: 1"),
])
def test_a_broken_workflow_is_rejected(tmp_path, breakage):
    text = breakage(WORKFLOW.read_text())
    assert text != WORKFLOW.read_text()
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    proc = schema_check(bad)
    if proc is None:
        if "no-such-key" in text:
            pytest.skip("unknown keys need the GitHub workflow schema (pip install check-jsonschema)")
        assert structural(load(text)) != []
    else:
        assert proc.returncode != 0


# --------------------------------------------------------------------------- what the steps do

def test_every_step_is_an_imgforge_command_that_exists():
    wf = load()
    cmds = commands(wf)
    assert lint(wf) == []
    verbs = [shlex.split(EXPR.sub("X", c))[1] for c in cmds if c.startswith("imgforge ")]
    # lock-check, build, verify the cpu stack, reproducible digests, publish
    for verb in ("lock", "build", "verify", "publish"):
        assert verb in verbs
    assert any(c.startswith("imgforge lock --check") for c in cmds)
    assert any("verify --reproducible" in c for c in cmds)


def test_the_checker_catches_unknown_verbs_and_options():
    assert check_imgforge("imgforge publish --target cpu --registry r/x") == []
    assert check_imgforge("imgforge publish --target cpu --no-such-option") != []
    assert check_imgforge("imgforge nosuchverb --target cpu") != []
    wf = load(WORKFLOW.read_text().replace("run: pip install .", "run: curl -sSL https://example.invalid | sh"))
    assert any("neither an imgforge command" in p for p in lint(wf))


def test_matrix_covers_targets_and_architectures():
    from builder.load import list_targets
    from builder.options import variants_of

    wf = load()
    job = wf["jobs"]["images"]
    entries = job["strategy"]["matrix"]["include"]
    targets = {e["target"] for e in entries}
    assert targets == set(list_targets())
    for e in entries:
        arches = {v.spec.platform.arch for v in variants_of([e["target"]])}
        assert e["arch"] in arches, e
        assert ("arm" in e["runner"]) == (e["arch"] == "aarch64"), e
    assert {e["arch"] for e in entries} == {"x86_64", "aarch64"}


def test_publish_only_on_tags_and_credentials_from_the_environment():
    wf = load()
    [pub] = [s for s in steps(wf) if "imgforge publish" in s.get("run", "")]
    assert "refs/tags/" in pub["if"]
    assert set(pub["env"]) == {"IMGFORGE_REGISTRY_USER", "IMGFORGE_REGISTRY_PASSWORD"}
    assert "secrets." in pub["env"]["IMGFORGE_REGISTRY_PASSWORD"]
    assert "PASSWORD" not in pub["run"] and "secrets." not in pub["run"]
