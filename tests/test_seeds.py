"""The rendered stacks carry what the field reports ran.

Expected flags, environment variables and gateway settings are read from the seed texts'
own commands (tests/seedparse.py), never copied from imgforge's output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seedparse  # noqa: E402

if not seedparse.SEEDS_DIR.is_dir():
    pytest.skip(f"seed texts not found at {seedparse.SEEDS_DIR} (they live beside the repository, in ../shared/seeds)",
                allow_module_level=True)

from builder.expand import expand  # noqa: E402
from builder.flags import load_flags  # noqa: E402
from builder.load import load_target  # noqa: E402
from builder.render import render  # noqa: E402

# Environment variables whose seed values point at the seed host's own CUDA install; in the
# images CUDA comes from the nvidia-* wheels, so the names must be there with image paths.
HOST_CUDA_PATHS = {"PATH", "LD_LIBRARY_PATH", "TRITON_PTXAS_PATH"}


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("stacks")
    got = {}
    for name in ("rtx4090", "tp4-rtx4090", "tp2-a40", "dgx-spark", "cpu"):
        for v in expand(load_target(name)):
            d = out / v.name
            render(v, d)
            compose = yaml.safe_load((d / "compose.yaml").read_text())
            got[v.name] = {
                "variant": v,
                "dir": d,
                "compose": compose,
                "flags": seedparse.parse_argv(compose["services"]["vllm"]["command"]),
                "env": compose["services"]["vllm"]["environment"],
                "text": (d / "compose.yaml").read_text(),
                "nginx": (d / "nginx.conf").read_text(),
            }
    return got


def same(want: Any, got: Any) -> bool:
    if isinstance(want, list) or isinstance(got, list):
        return isinstance(want, list) and isinstance(got, list) and len(want) == len(got) and all(map(same, want, got))
    if want is True or got is True:
        return want is got
    try:
        return float(want) == float(got)
    except (TypeError, ValueError):
        return str(want) == str(got)


def assert_flags(want: dict[str, Any], got: dict[str, Any], where: str, skip: set[str] = frozenset()) -> None:
    missing = {k: v for k, v in want.items() if k not in skip and k not in got}
    wrong = {k: (v, got[k]) for k, v in want.items() if k not in skip and k in got and not same(v, got[k])}
    assert not missing, f"{where}: seed flags missing from the rendered command: {missing}"
    assert not wrong, f"{where}: seed flags with other values (seed, rendered): {wrong}"


def device_ids(stack) -> list[str]:
    res = stack["compose"]["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(res) == 1 and res[0]["driver"] == "nvidia" and res[0]["capabilities"] == ["gpu"]
    return res[0]["device_ids"]


# ---- seed 004: DGX Spark ------------------------------------------------------------------


def test_dgx_spark_has_every_flag_and_env_of_seed_004(stacks):
    unit = seedparse.vllm_unit("004")
    s = stacks["dgx-spark"]
    assert_flags(unit["flags"], s["flags"], "dgx-spark")
    for key, value in unit["env"].items():
        assert key in s["env"], f"seed 004's {key} missing"
        if key in HOST_CUDA_PATHS:
            assert "/usr/local/cuda" not in s["env"][key], f"{key} still points at a host CUDA: {s['env'][key]}"
        else:
            assert s["env"][key] == value, key


def test_dgx_spark_memory_limits_of_seed_004(stacks):
    limits = seedparse.vllm_unit("004")["limits"]
    vllm = stacks["dgx-spark"]["compose"]["services"]["vllm"]
    assert vllm["mem_limit"].lower() == limits["MemoryMax"].lower()
    # MemorySwapMax=0: no swap beyond the memory limit, i.e. memory + swap == memory.
    assert limits["MemorySwapMax"] == "0"
    assert vllm["memswap_limit"] == vllm["mem_limit"]
    assert device_ids(stacks["dgx-spark"]) == ["0"]
    assert vllm["platform"] == "linux/arm64"


# ---- seed 000: RTX 4090 -----------------------------------------------------------------


def test_rtx4090_cu130_headless_has_every_flag_and_env_of_seed_000(stacks):
    unit = seedparse.vllm_unit("000")
    s = stacks["rtx4090-cu130-headless"]
    assert_flags(unit["flags"], s["flags"], "rtx4090-cu130-headless")
    host_gpus = unit["env"]["CUDA_VISIBLE_DEVICES"].split(",")
    for key, value in unit["env"].items():
        if key == "CUDA_VISIBLE_DEVICES":
            # The seed pins host GPU(s) by index; the container is given exactly those GPUs,
            # which it sees renumbered from 0.
            assert device_ids(s) == host_gpus
            assert s["env"][key] == ",".join(str(i) for i in range(len(host_gpus)))
        else:
            assert s["env"].get(key) == value, key


@pytest.mark.parametrize("name", ["rtx4090-cu124-headless", "rtx4090-cu124-display"])
def test_rtx4090_cu124_has_every_seed_000_flag_its_vllm_accepts_and_names_the_rest(stacks, name):
    unit = seedparse.vllm_unit("000")
    s = stacks[name]
    v = s["variant"]
    flagset = load_flags(*v.flags_package)
    display = seedparse.display_flags(seedparse.seed_text("000")) if v.spec.platform.display else {}
    lacking = {k for k in unit["flags"] if k != "model" and not flagset.accepts(k)}
    assert_flags({**unit["flags"], **display}, s["flags"], name, skip=lacking)
    for flag in sorted(lacking):
        assert flag not in s["flags"]
        line = f"vLLM {v.spec.software.vllm} lacks --{flag}"
        assert line in s["text"], f"compose.yaml does not name the lacking flag --{flag}"
        assert line in (s["dir"] / "README.md").read_text()
    assert device_ids(s) == unit["env"]["CUDA_VISIBLE_DEVICES"].split(",")


def test_rtx4090_display_variants_follow_seed_000_single_gpu_advice(stacks):
    advice = seedparse.display_flags(seedparse.seed_text("000"))
    assert advice, "seed 000's single-GPU advice not found"
    for name in ("rtx4090-cu124-display", "rtx4090-cu130-display"):
        assert_flags(advice, stacks[name]["flags"], name)
    unit = seedparse.vllm_unit("000")
    headless = {k: unit["flags"][k] for k in advice}
    assert_flags(headless, stacks["rtx4090-cu130-headless"]["flags"], "rtx4090-cu130-headless")


# ---- seed 002: 4x RTX 4090 ------------------------------------------------------------------


def test_tp4_rtx4090_has_seed_002_settings(stacks):
    notes = seedparse.commissioning(seedparse.seed_text("002"))
    want = {k.replace("_", "-"): v for k, v in notes.items()}
    assert want["quantization"] == "awq_marlin"  # the seed's lesson, read from its text
    s = stacks["tp4-rtx4090"]
    assert_flags(want, s["flags"], "tp4-rtx4090")
    assert device_ids(s) == [str(i) for i in range(int(want["tensor-parallel-size"]))]
    assert s["compose"]["services"]["vllm"]["shm_size"] == "16g"


# ---- seed 003: 2x A40 + Open WebUI -------------------------------------------------------------


def test_tp2_a40_has_seed_003_tensor_parallel(stacks):
    commands = seedparse.serve_commands(seedparse.seed_text("003"))
    tp = [c for c in commands if "tensor-parallel-size" in c]
    assert tp, "seed 003 has no tensor-parallel serve command"
    s = stacks["tp2-a40"]
    for c in tp:
        assert_flags({"tensor-parallel-size": c["tensor-parallel-size"]}, s["flags"], "tp2-a40")
    assert len(device_ids(s)) == int(tp[0]["tensor-parallel-size"])


def test_tp2_a40_has_seed_003_open_webui_env(stacks):
    seed_env = seedparse.docker_run_env(seedparse.seed_text("003"), "open-webui")
    s = stacks["tp2-a40"]
    webui = s["compose"]["services"]["webui"]["environment"]
    # Where the seed's Open WebUI found vLLM and its model on that host; in the stack it
    # reaches vLLM by service name and names the served model.
    stack_specific = {
        "OPENAI_API_BASE_URL": "http://vllm:8000/v1",
        "OPENAI_API_MODEL": s["variant"].served_name,
    }
    for key, value in seed_env.items():
        assert key in webui, f"seed 003's Open WebUI {key} missing"
        if key == "OPENAI_API_KEY":
            assert webui[key] and "$" not in webui[key], key  # a fixed internal value, not a user key
        elif key in stack_specific:
            assert webui[key] == stack_specific[key], key
        else:
            assert webui[key] == value, key


# ---- seed 001: the gateway of every stack ---------------------------------------------------------


def test_every_stack_has_seed_001_gateway_profile(stacks):
    want = seedparse.gateway_profile(seedparse.nginx_block(seedparse.seed_text("001")))
    assert want["rate"] == ["10r/s"] and want["burst"] == ["20"]  # parsed, not empty
    for name, s in stacks.items():
        got = seedparse.gateway_profile(s["nginx"])
        assert got == want, f"{name}: nginx.conf differs from seed 001's profile"


def test_seed_001_key_checks_guard_the_api_but_not_health(stacks):
    seed = seedparse.nginx_block(seedparse.seed_text("001"))
    assert 'return 401' in seed and 'return 403' in seed
    for name, s in stacks.items():
        conf = s["nginx"]
        health = conf[conf.index("location = /health"):]
        health = health[: health.index("}")]
        assert "api_key" not in health and "limit_req" not in health, name
        api = conf[conf.index("location / {"):]
        api = api[: api.index("proxy_pass")]
        assert "return 401" in api and "return 403" in api and "limit_req zone=" in api, name
