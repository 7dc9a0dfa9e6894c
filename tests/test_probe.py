"""GPU probe: a recorded real 4-GPU host, synthetic topologies from the seeds, refusals."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from builder import probe as P
from builder.errors import ImgforgeError

FIX = Path(__file__).parent / "fixtures" / "probe"
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- synthetic hosts

def host(names, *, driver="570.86.10", display=(), p2p=None, nvlink_pairs=(), topology=30, links=4):
    """A recording of a host: GPU i named names[i] at PCI bus i+1; P2P everywhere unless ``p2p`` says
    which pairs have it; NVLink only between ``nvlink_pairs``."""
    n = len(names)
    nvl = {frozenset(p) for p in nvlink_pairs}
    have = None if p2p is None else {frozenset(p) for p in p2p}
    rec = {"driver_version": driver, "cuda_driver_version": 12080, "devices": [], "nvlinks": {}, "p2p": {}, "topology": {}}
    for i, name in enumerate(names):
        rec["devices"].append({
            "index": i, "name": name, "memory_total_bytes": 25757220864, "compute_capability": "8.9",
            "pci_bus_id": f"00000000:{i + 1:02X}:00.0", "display_active": int(i in display),
        })
        mine = [p for p in nvl if i in p]
        rec["nvlinks"][str(i)] = [{"link": k, "active": True, "remote_pci_bus_id": None} for k in range(links)] if mine else None
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            pair = frozenset((i, j))
            ok = have is None or pair in have or pair in nvl
            st = "ok" if ok else "chipset_not_supported"
            rec["p2p"][f"{i},{j}"] = {"read": st, "write": st, "nvlink": "ok" if pair in nvl else "not_supported", "atomics": st}
            rec["topology"][f"{i},{j}"] = topology
    return rec


def run(rec, variants=None):
    result = P.probe(P.RecordedReader(rec))
    return result, P.suggest(result, variants)


# ---------------------------------------------------------------- the real 4-GPU host

def smi_topo(path: Path) -> dict[tuple[int, int], str]:
    """Cells of `nvidia-smi topo -m` between GPUs: {(i, j): 'NV18' | 'PIX' | 'PHB' | ...}."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    header = lines[0].split("\t")
    gpu_cols = [k for k, h in enumerate(header) if re.fullmatch(r"GPU\d+", h.strip())]
    cells = {}
    for ln in lines[1:]:
        cols = ln.split("\t")
        m = re.fullmatch(r"GPU(\d+)", cols[0].strip())
        if not m:
            break
        i = int(m.group(1))
        for k in gpu_cols:
            j = int(header[k].strip()[3:])
            if i != j:
                cells[(i, j)] = cols[k].strip()
    return cells


def smi_p2p(path: Path, mode: str) -> dict[tuple[int, int], str]:
    """The `nvidia-smi topo -p2p <mode>` matrix from the recorded text."""
    text = path.read_text()
    block = text.split(f"== nvidia-smi topo -p2p {mode}\n", 1)[1].split("Legend", 1)[0]
    rows = [ln.split() for ln in block.splitlines() if ln.strip().startswith("GPU")]
    header, body = rows[0], rows[1:]
    return {(int(r[0][3:]), int(header[k][3:])): r[k + 1] for r in body for k in range(len(header)) if r[k + 1] != "X"}


def largest_group(n: int, linked) -> int:
    for size in range(n, 0, -1):
        if any(all(linked(a, b) for a, b in combinations(c, 2)) for c in combinations(range(n), size)):
            return size
    return 0


@pytest.fixture(scope="module")
def real():
    rec = json.loads((FIX / "h200x4_record.json").read_text())
    result, sug = run(rec)
    return rec, result, sug


def test_real_record_replays_to_the_recorded_probe(real):
    _, result, sug = real
    recorded = json.loads((FIX / "h200x4_probe.json").read_text())
    assert result == recorded["probe"]
    assert sug["env"] == recorded["suggestion"]["env"]


def test_real_probe_agrees_with_nvidia_smi_topo(real):
    _, result, _ = real
    topo = smi_topo(FIX / "h200x4_topo.txt")
    n = result["gpu_count"]
    assert n == 4 and len(topo) == n * (n - 1)
    for p in result["pairs"]:
        assert p["smi"] == topo[(p["a"], p["b"])] == topo[(p["b"], p["a"])]
        assert p["nvlink"] == topo[(p["a"], p["b"])].startswith("NV")
    for mode, key in (("r", "p2p_read"), ("w", "p2p_write"), ("n", "nvlink_status")):
        matrix = smi_p2p(FIX / "h200x4_p2p_nvlink_torch.txt", mode)
        for p in result["pairs"]:
            assert (matrix[(p["a"], p["b"])] == "OK") == (p[key] == "ok")


def test_real_suggestion_is_the_nvlink_group_from_nvidia_smi(real):
    _, result, sug = real
    topo = smi_topo(FIX / "h200x4_topo.txt")
    n = result["gpu_count"]
    expected_tp = largest_group(n, lambda a, b: topo[(a, b)].startswith("NV"))
    assert sug["tensor_parallel_size"] == expected_tp == 4
    assert sug["nvlink"] is True
    assert sug["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert sug["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert sug["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert sug["warnings"] == []
    assert sug["gpu"] == "H200"


def test_real_probe_matches_nvidia_smi_csv(real):
    _, result, _ = real
    rows = list(csv.DictReader((FIX / "h200x4_smi.csv").read_text().splitlines(), skipinitialspace=True))
    assert len(rows) == result["gpu_count"]
    for row, g in zip(rows, result["gpus"]):
        assert int(row["index"]) == g["index"]
        assert row["name"] == g["name"] and row["pci.bus_id"] == g["pci_bus_id"]
        assert int(row["memory.total [MiB]"].split()[0]) == g["memory_total_bytes"] // 2**20
        assert row["driver_version"] == result["driver_version"]
        # nvidia-smi -q says "Display Attached: Yes" on these datacenter cards (NVML display mode 1, a
        # deprecated field), but nothing is active: the probe must treat them as headless
        assert (row["display_active"] == "Enabled") == g["display"]
    assert all(g["display_mode"] == 1 and g["display"] is False for g in result["gpus"])


def test_real_host_nvlink_links_counted(real):
    _, result, _ = real
    for g in result["gpus"]:
        assert g["nvlink"] == {"supported": True, "links": 18, "active": 18}


# ---------------------------------------------------------------- synthetic topologies

def test_pcie_only_four_rtx4090_tp4_with_pcie_warning():
    # seed 002: 4x RTX 4090, P2P over PCIe only, no NVLink
    _, sug = run(host(["NVIDIA GeForce RTX 4090"] * 4))
    assert sug["tensor_parallel_size"] == 4
    assert sug["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert sug["nvlink"] is False
    assert any("PCIe" in w and "time to first token" in w for w in sug["warnings"])


def test_nvlink_everywhere_gives_no_pcie_warning():
    rec = host(["NVIDIA A40"] * 4, nvlink_pairs=list(combinations(range(4), 2)))
    _, sug = run(rec)
    assert sug["tensor_parallel_size"] == 4 and sug["nvlink"] is True
    assert not any("PCIe" in w for w in sug["warnings"])


def test_nvlink_pairs_without_p2p_across_pairs_tp2():
    # two NVLink-bridged pairs (0-1, 2-3); no P2P between the pairs
    rec = host(["NVIDIA GeForce RTX 3090"] * 4, p2p=[], nvlink_pairs=[(0, 1), (2, 3)])
    result, sug = run(rec)
    assert sug["tensor_parallel_size"] == 2
    assert sug["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert sug["nvlink"] is True
    assert any("no P2P between GPU" in w and "0-2" in w for w in sug["warnings"])
    assert [p["nvlink"] for p in result["pairs"]] == [True, False, False, False, False, True]


def test_no_p2p_at_all_gives_single_gpu():
    _, sug = run(host(["NVIDIA GeForce RTX 4090"] * 2, p2p=[]))
    assert sug["tensor_parallel_size"] == 1
    assert any("no P2P between GPU 0-1" in w for w in sug["warnings"])


def test_three_peer_gpus_round_down_to_two():
    _, sug = run(host(["NVIDIA L40S"] * 3))
    assert sug["tensor_parallel_size"] == 2 and sug["p2p_group"] == [0, 1, 2]
    assert any("rounded down to 2" in w for w in sug["warnings"])


def test_cuda_visible_devices_follow_pci_bus_order():
    rec = host(["NVIDIA GeForce RTX 4090"] * 2, p2p=[])
    rec["devices"][0]["pci_bus_id"], rec["devices"][1]["pci_bus_id"] = "00000000:81:00.0", "00000000:41:00.0"
    _, sug = run(rec)
    assert sug["env"]["CUDA_VISIBLE_DEVICES"] == "1"  # the lower bus id comes first


def test_display_gpu_left_to_desktop_headless_4090_pinned():
    # seed 000: RTX 3090 Ti drives the monitor (bus 0), RTX 4090 headless (bus 1)
    rec = host(["NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 4090"], display=(0,), p2p=[])
    result, sug = run(rec)
    assert result["gpus"][0]["canonical"] == "RTX 3090 Ti" and result["gpus"][1]["canonical"] == "RTX 4090"
    assert sug["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert sug["serve"]["gpu-memory-utilization"] == 0.92
    assert sug["tensor_parallel_size"] == 1 and sug["gpu"] == "RTX 4090"
    assert any("drives a display" in w for w in sug["warnings"])


def test_single_gpu_with_display_uses_085_and_headless_092():
    _, with_display = run(host(["NVIDIA GeForce RTX 4090"], display=(0,)))
    _, headless = run(host(["NVIDIA GeForce RTX 4090"]))
    assert with_display["serve"]["gpu-memory-utilization"] == 0.85
    assert headless["serve"]["gpu-memory-utilization"] == 0.92
    assert with_display["env"]["CUDA_VISIBLE_DEVICES"] == "0"


# ---------------------------------------------------------------- variants, driver

def test_cuda_driver_minimums_from_facts():
    assert P.driver_min_for_cuda("12.4") == "550.54.14"
    assert P.driver_min_for_cuda("12.8") == "570.26"
    assert P.driver_min_for_cuda("13.0") == "580.65.06"
    assert P.version_tuple("550.54.14") < P.version_tuple("550.54.15") < P.version_tuple("570.26")


def test_too_old_driver_refused_and_new_enough_accepted():
    v = {"name": "rtx4090-cu128", "gpu": "RTX 4090", "count": 1, "cuda": "12.8", "tp": 1}
    _, old = run(host(["NVIDIA GeForce RTX 4090"], driver="550.54.14"), [v])
    _, new = run(host(["NVIDIA GeForce RTX 4090"], driver="570.26"), [v])
    assert old["variants"][0]["status"] == "refused"
    assert "550.54.14" in old["variants"][0]["reasons"][0] and ">= 570.26" in old["variants"][0]["reasons"][0]
    assert new["variants"][0]["status"] == "ok"
    with pytest.raises(P.DriverTooOldError):
        P.check_driver({"driver_version": "550.54.14"}, "13.0")
    P.check_driver({"driver_version": "580.65.06"}, "13.0")


def _variant(name, gpu, count, tp, cuda="12.4", heads=64, kv=8):
    spec = SimpleNamespace(
        platform=SimpleNamespace(gpu=gpu, count=count, cuda=cuda),
        serve={"tensor-parallel-size": tp},
        model=SimpleNamespace(config={"num_attention_heads": heads, "num_key_value_heads": kv}),
    )
    return SimpleNamespace(name=name, spec=spec)


def test_targets_matched_by_gpu_name_and_count():
    variants = [_variant("tp4-rtx4090", "RTX 4090", 4, 4), _variant("tp2-a40", "A40", 2, 2),
                _variant("rtx4090", "RTX 4090", 1, 1), _variant("cpu", None, 1, 1)]
    _, sug = run(host(["NVIDIA GeForce RTX 4090"] * 4, driver="550.54.14"), variants)
    status = {v["name"]: v["status"] for v in sug["variants"]}
    assert status == {"tp4-rtx4090": "ok", "tp2-a40": "mismatch", "rtx4090": "ok", "cpu": "other"}


def test_variant_tp_larger_than_p2p_group_is_a_mismatch():
    _, sug = run(host(["NVIDIA GeForce RTX 3090"] * 4, p2p=[], nvlink_pairs=[(0, 1), (2, 3)], driver="560.35.03"),
                 [_variant("tp4", "RTX 3090", 4, 4)])
    assert sug["variants"][0]["status"] == "mismatch"


def test_tp_that_does_not_divide_heads_is_refused():
    _, sug = run(host(["NVIDIA L40S"] * 4, driver="560.35.03"), [_variant("odd", "L40S", 4, 4, heads=6, kv=6)])
    assert sug["variants"][0]["status"] == "refused"
    assert any("does not divide" in r for r in sug["variants"][0]["reasons"])


# ---------------------------------------------------------------- no driver, NCCL, CLI

def test_no_driver_recording_raises_exit_3():
    with pytest.raises(P.NoDriverError) as e:
        P.RecordedReader({"no_driver": "no NVIDIA driver found on this host"})
    assert e.value.exit_code == 3


def test_no_driver_one_clear_line_and_exit_3(monkeypatch, capsys):
    import pynvml

    def no_lib():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_lib)
    assert P.main(["--json"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "no NVIDIA driver" in err

    r = CliRunner().invoke(__import__("builder.cmd_probe", fromlist=["cmd"]).cmd, ["--json"])
    assert isinstance(r.exception, ImgforgeError) and r.exception.exit_code == 3
    assert "\n" not in str(r.exception)


def test_probe_sets_nccl_nvls_off_in_its_environment():
    env = dict(os.environ, NCCL_NVLS_ENABLE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import os, builder.probe; print(os.environ['NCCL_NVLS_ENABLE'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0"


def test_probe_module_imports_without_click_or_pydantic():
    code = ("import sys; sys.modules['click'] = None; sys.modules['pydantic'] = None; "
            "import builder.probe; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_cli_replays_a_recording_as_json(tmp_path):
    from builder.cmd_probe import cmd

    path = tmp_path / "rec.json"
    path.write_text(json.dumps(host(["NVIDIA GeForce RTX 4090"] * 4)))
    r = CliRunner().invoke(cmd, ["--from-record", str(path), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["probe"]["gpu_count"] == 4 and d["suggestion"]["tensor_parallel_size"] == 4


def test_record_of_a_replay_is_identical():
    rec = json.loads((FIX / "h200x4_record.json").read_text())
    again = P.record(P.RecordedReader(rec))
    assert json.loads(json.dumps(again)) == rec


def _real_targets(*refs):
    try:
        from builder.expand import expand
        from builder.load import load_target

        return [v for ref in refs for v in expand(load_target(ref))]
    except Exception:  # the target pipeline is still being assembled
        return None


@pytest.mark.xfail(_real_targets("tp4-rtx4090") is None, reason="target loading not complete in this tree", strict=False)
def test_seed_002_host_matches_the_tp4_rtx4090_target():
    variants = _real_targets("tp4-rtx4090", "tp2-a40")
    # the target's images are CUDA 13.0; seed 002's host runs driver 590.48.01
    _, sug = run(host(["NVIDIA GeForce RTX 4090"] * 4, driver="590.48.01"), variants)
    status = {v["name"]: v["status"] for v in sug["variants"]}
    assert status["tp4-rtx4090"] == "ok"
    assert status["tp2-a40"] == "mismatch"
    _, old = run(host(["NVIDIA GeForce RTX 4090"] * 4, driver="550.54.14"), variants)
    assert {v["name"]: v["status"] for v in old["variants"]}["tp4-rtx4090"] == "refused"
