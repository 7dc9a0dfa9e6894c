"""`imgforge probe`: what the GPUs of this host are, how they reach each other, and what to serve.

Two halves, kept apart so the logic can be tested without a GPU:

* a *reader* answers raw NVML questions (``PynvmlReader`` asks the driver through nvidia-ml-py,
  ``RecordedReader`` answers from a recording, real or synthetic); ``probe(reader)`` turns the
  answers into a plain dict (the ``--json`` output), and ``record(reader)`` keeps the raw answers
  so a recording made on one host replays the same probe anywhere;
* ``suggest(probe_result, variants=None)`` is a pure function of that dict: CUDA_VISIBLE_DEVICES,
  utilization, tensor-parallel size, warnings, refusals, matching targets.

This module needs only the standard library and, for a real host, nvidia-ml-py (``pynvml``).
It never initializes CUDA or NCCL; it still sets ``NCCL_NVLS_ENABLE=0`` in its own environment
first, so nothing started from it can turn on NVLink multicast.

Exit codes of the command: 0 probe done; 3 no NVIDIA driver (or no nvidia-ml-py) on this host.
"""

from __future__ import annotations

import json
import os
import sys
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable

os.environ["NCCL_NVLS_ENABLE"] = "0"

from builder.errors import ImgforgeError  # noqa: E402  (stdlib-only module)

FACTS_DIR = Path(__file__).resolve().parent / "facts"

# NVML's own enums, by value (pynvml's NVML_P2P_CAPS_INDEX_READ is a tuple by mistake in some
# releases, so the values are spelled here).
P2P_CAPS = {"read": 0, "write": 1, "nvlink": 2, "atomics": 3, "pci": 4}
P2P_STATUS = {
    0: "ok",
    1: "chipset_not_supported",
    2: "gpu_not_supported",
    3: "ioh_topology_not_supported",
    4: "disabled_by_regkey",
    5: "not_supported",
    6: "unknown",
}
# nvmlDeviceGetTopologyCommonAncestor levels and the column nvidia-smi topo -m prints for each.
TOPOLOGY = {
    0: ("same_board", "internal"),
    10: ("single_switch", "PIX"),
    20: ("multiple_switch", "PXB"),
    30: ("host_bridge", "PHB"),
    40: ("node", "NODE"),
    50: ("system", "SYS"),
}
NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS on current drivers; newer headers say 36

# Seed 000's rule: a GPU that drives a display loses 0.5-1.5 GB to the desktop.
UTIL_HEADLESS = 0.92
UTIL_DISPLAY = 0.85


class NoDriverError(ImgforgeError):
    """No NVIDIA driver (or no nvidia-ml-py) on this host. Exit 3."""

    exit_code = 3


class DriverTooOldError(ImgforgeError):
    """The host driver is older than a variant's CUDA needs. Exit 2."""

    exit_code = 2


# ---------------------------------------------------------------- facts

def _facts(name: str) -> dict[str, Any]:
    return json.loads((FACTS_DIR / name).read_text(encoding="utf-8"))


def _norm(s: str) -> str:
    return "".join(s.lower().split()).replace("nvidia", "").replace("geforce", "")


def canonical_gpu(name: str) -> str | None:
    """The gpus.json key for a name NVML reports (or a key itself), else None."""
    wanted = _norm(name)
    for key, info in _facts("gpus.json")["gpus"].items():
        if _norm(key) == wanted or any(_norm(a) == wanted for a in info.get("aliases", [])):
            return key
    return None


def cuda_table() -> dict[str, dict[str, Any]]:
    return _facts("cuda.json")["cuda"]


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(v).split(".") if p.isdigit())


def driver_min_for_cuda(cuda: str) -> str | None:
    entry = cuda_table().get(cuda)
    return entry.get("driver_min_linux") if entry else None


# ---------------------------------------------------------------- readers

class PynvmlReader:
    """Asks the NVIDIA driver through nvidia-ml-py. Raises NoDriverError when there is none."""

    def __init__(self) -> None:
        try:
            import pynvml  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - depends on the host
            raise NoDriverError(f"no NVIDIA driver check possible: nvidia-ml-py (pynvml) is not installed ({exc})") from exc
        self.nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NoDriverError(f"no NVIDIA driver found on this host (NVML: {exc}); install the NVIDIA driver or run on a GPU host") from exc
        self._handles: dict[int, Any] = {}

    def _h(self, i: int) -> Any:
        if i not in self._handles:
            self._handles[i] = self.nv.nvmlDeviceGetHandleByIndex(i)
        return self._handles[i]

    @staticmethod
    def _s(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _try(self, fn, *args, default=None):
        try:
            return fn(*args)
        except self.nv.NVMLError:
            return default

    def driver_version(self) -> str:
        return self._s(self.nv.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> int | None:
        return self._try(self.nv.nvmlSystemGetCudaDriverVersion)

    def device_count(self) -> int:
        return int(self.nv.nvmlDeviceGetCount())

    def device(self, i: int) -> dict[str, Any]:
        nv, h = self.nv, self._h(i)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        cc = self._try(nv.nvmlDeviceGetCudaComputeCapability, h)
        mig = self._try(nv.nvmlDeviceGetMigMode, h)
        pci = nv.nvmlDeviceGetPciInfo(h)
        power = self._try(nv.nvmlDeviceGetPowerManagementLimit, h)
        return {
            "index": i,
            "name": self._s(nv.nvmlDeviceGetName(h)),
            "uuid": self._s(self._try(nv.nvmlDeviceGetUUID, h, default="")),
            "memory_total_bytes": int(mem.total),
            "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
            "pci_bus_id": self._s(pci.busId),
            "display_active": self._try(nv.nvmlDeviceGetDisplayActive, h),
            "display_mode": self._try(nv.nvmlDeviceGetDisplayMode, h),
            "persistence_mode": self._try(nv.nvmlDeviceGetPersistenceMode, h),
            "mig_mode": list(mig) if mig is not None else None,
            "power_limit_w": power / 1000 if power is not None else None,
            "pcie_max_gen": self._try(nv.nvmlDeviceGetMaxPcieLinkGeneration, h),
            "pcie_max_width": self._try(nv.nvmlDeviceGetMaxPcieLinkWidth, h),
            "pcie_gen": self._try(nv.nvmlDeviceGetCurrPcieLinkGeneration, h),
            "pcie_width": self._try(nv.nvmlDeviceGetCurrPcieLinkWidth, h),
        }

    def nvlinks(self, i: int) -> list[dict[str, Any]] | None:
        """Links of GPU i; None when NVLink is not supported at all (not a failure)."""
        nv, h = self.nv, self._h(i)
        links = []
        for link in range(NVLINK_MAX_LINKS):
            try:
                state = nv.nvmlDeviceGetNvLinkState(h, link)
            except nv.NVMLError_NotSupported:
                if link == 0:
                    return None
                break
            except (nv.NVMLError_InvalidArgument, nv.NVMLError):
                break
            remote = self._try(nv.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            links.append({
                "link": link,
                "active": bool(state),
                "remote_pci_bus_id": self._s(remote.busId) if remote is not None else None,
            })
        return links

    def p2p(self, i: int, j: int, cap: str) -> str:
        try:
            st = self.nv.nvmlDeviceGetP2PStatus(self._h(i), self._h(j), P2P_CAPS[cap])
        except self.nv.NVMLError as exc:
            return f"error: {exc}"
        return P2P_STATUS.get(int(st), f"status_{int(st)}")

    def topology(self, i: int, j: int) -> int | None:
        return self._try(self.nv.nvmlDeviceGetTopologyCommonAncestor, self._h(i), self._h(j))


class RecordedReader:
    """Answers from a recording made by ``record()`` (or written by hand for a synthetic host).

    A recording with ``"no_driver": "<message>"`` behaves like a host without a driver.
    """

    def __init__(self, rec: dict[str, Any]):
        if rec.get("no_driver"):
            raise NoDriverError(rec["no_driver"])
        self.rec = rec

    def driver_version(self) -> str:
        return self.rec["driver_version"]

    def cuda_driver_version(self) -> int | None:
        return self.rec.get("cuda_driver_version")

    def device_count(self) -> int:
        return len(self.rec["devices"])

    def device(self, i: int) -> dict[str, Any]:
        return dict(self.rec["devices"][i])

    def nvlinks(self, i: int) -> list[dict[str, Any]] | None:
        return self.rec.get("nvlinks", {}).get(str(i))

    def p2p(self, i: int, j: int, cap: str) -> str:
        return self.rec["p2p"][f"{i},{j}"][cap]

    def topology(self, i: int, j: int) -> int | None:
        return self.rec.get("topology", {}).get(f"{i},{j}")


def record(reader: Any) -> dict[str, Any]:
    """Every raw answer the probe needs, as JSON-able data (replay with RecordedReader)."""
    n = reader.device_count()
    rec: dict[str, Any] = {
        "driver_version": reader.driver_version(),
        "cuda_driver_version": reader.cuda_driver_version(),
        "devices": [reader.device(i) for i in range(n)],
        "nvlinks": {str(i): reader.nvlinks(i) for i in range(n)},
        "p2p": {},
        "topology": {},
    }
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            rec["p2p"][f"{i},{j}"] = {cap: reader.p2p(i, j, cap) for cap in ("read", "write", "nvlink", "atomics")}
            rec["topology"][f"{i},{j}"] = reader.topology(i, j)
    return rec


# ---------------------------------------------------------------- probe

def probe(reader: Any) -> dict[str, Any]:
    """The probe result: a plain dict, the same one ``--json`` prints."""
    n = reader.device_count()
    cuda_drv = reader.cuda_driver_version()
    gpus = []
    for i in range(n):
        d = reader.device(i)
        links = reader.nvlinks(i)
        d["canonical"] = canonical_gpu(d["name"])
        d["display"] = bool(d.get("display_active")) or False
        d["nvlink"] = {
            "supported": links is not None,
            "links": len(links or []),
            "active": sum(1 for link in (links or []) if link.get("active")),
        }
        gpus.append(d)
    pairs = []
    for i, j in combinations(range(n), 2):
        a, b = reader.p2p(i, j, "read"), reader.p2p(i, j, "write")
        c, d_ = reader.p2p(j, i, "read"), reader.p2p(j, i, "write")
        nvl = reader.p2p(i, j, "nvlink")
        level = reader.topology(i, j)
        name, smi = TOPOLOGY.get(level, (f"level_{level}", "?")) if level is not None else ("unknown", "?")
        pairs.append({
            "a": i,
            "b": j,
            "p2p_read": a,
            "p2p_write": b,
            "p2p_read_back": c,
            "p2p_write_back": d_,
            "p2p": all(s == "ok" for s in (a, b, c, d_)),
            "nvlink": nvl == "ok",
            "nvlink_status": nvl,
            "topology": name,
            "topology_level": level,
            "smi": f"NV{min(gpus[i]['nvlink']['active'], gpus[j]['nvlink']['active'])}" if nvl == "ok" else smi,
        })
    return {
        "driver_version": reader.driver_version(),
        "cuda_driver_version": (f"{cuda_drv // 1000}.{(cuda_drv % 1000) // 10}" if cuda_drv else None),
        "gpu_count": n,
        "gpus": gpus,
        "pairs": pairs,
    }


def probe_host() -> dict[str, Any]:
    return probe(PynvmlReader())


# ---------------------------------------------------------------- suggest

def _bus_key(bus_id: str) -> tuple[int, ...]:
    """Sort key for "00000000:CE:00.0" in numeric PCI order (domain, bus, device, function)."""
    parts = bus_id.replace(".", ":").split(":")
    try:
        return tuple(int(p, 16) for p in parts)
    except ValueError:
        return (1 << 30,)


def _pair(result: dict[str, Any], i: int, j: int) -> dict[str, Any] | None:
    a, b = min(i, j), max(i, j)
    for p in result["pairs"]:
        if p["a"] == a and p["b"] == b:
            return p
    return None


def _largest_clique(nodes: list[int], linked) -> list[int]:
    """Largest set of nodes all pairwise linked; ties go to the set earliest in ``nodes`` order."""
    for size in range(len(nodes), 0, -1):
        for combo in combinations(nodes, size):
            if all(linked(x, y) for x, y in combinations(combo, 2)):
                return list(combo)
    return []


def _pow2_floor(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def suggest(result: dict[str, Any], variants: Iterable[Any] | None = None) -> dict[str, Any]:
    """What to serve on the probed host.

    Rules (each one documented where it comes from):

    * Serving GPUs: the headless GPUs when there are any (seed 000: the display GPU keeps the
      desktop, vLLM gets the headless one); otherwise all GPUs, display and all.
    * Among the serving GPUs only one model is used (tensor parallelism splits a model evenly, so
      mixed cards run at the smallest one's pace and memory): the model with the largest
      peer-to-peer group wins.
    * Tensor-parallel group: the largest set of those GPUs in which every pair has P2P read and
      write in both directions (NVML). Within it, groups whose pairs are all NVLink are preferred.
      The size is then rounded down to a power of two, because vLLM needs the tensor-parallel
      size to divide the model's attention heads and KV heads, which are powers of two or
      multiples of them in the models the targets serve; a variant's own model is checked exactly.
    * CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES in PCI bus order, as NVML indices
      (NVML enumerates in PCI bus order, which is what PCI_BUS_ID makes CUDA do).
    * --gpu-memory-utilization 0.92 when no chosen GPU drives a display, else 0.85 (seed 000).
    * Warnings: pairs without P2P (traffic goes through host memory), and groups whose P2P runs
      over PCIe only (seed 002: ~2 s time to first token on 4x RTX 4090 at TP=4, versus roughly
      50-100 ms expected with NVLink).
    * Variants: each one is matched by GPU name and count; one whose CUDA needs a newer driver
      than the host has is refused (minimums in facts/cuda.json).
    """
    gpus = result["gpus"]
    warnings: list[str] = []
    if not gpus:
        return {"gpus": [], "tensor_parallel_size": 0, "env": {}, "serve": {}, "warnings": ["no GPU found"], "variants": []}
    order = sorted(range(len(gpus)), key=lambda i: _bus_key(gpus[i]["pci_bus_id"]))
    headless = [i for i in order if not gpus[i].get("display")]
    candidates = headless or order
    if headless and len(headless) < len(order):
        shown = ", ".join(f"{i} ({gpus[i]['name']}, {gpus[i]['pci_bus_id']})" for i in order if gpus[i].get("display"))
        warnings.append(f"GPU {shown} drives a display: left to the desktop, not used for serving")

    def p2p(i: int, j: int) -> bool:
        p = _pair(result, i, j)
        return bool(p and p["p2p"])

    def nvl(i: int, j: int) -> bool:
        p = _pair(result, i, j)
        return bool(p and p["nvlink"])

    by_model: dict[str, list[int]] = {}
    for i in candidates:
        by_model.setdefault(gpus[i].get("canonical") or gpus[i]["name"], []).append(i)
    best: list[int] = []
    for members in by_model.values():
        group = _largest_clique(members, p2p)
        if len(group) > len(best):
            best = group
    # prefer an all-NVLink group of the same size
    same_model = next(m for m in by_model.values() if best[0] in m)
    nvl_group = _largest_clique(same_model, lambda x, y: p2p(x, y) and nvl(x, y))
    tp = _pow2_floor(len(best))
    if len(nvl_group) >= tp > 1:
        chosen = nvl_group[:tp]
    else:
        chosen = best[:tp]
    chosen = sorted(chosen, key=lambda i: _bus_key(gpus[i]["pci_bus_id"]))

    missing = [(i, j) for i, j in combinations(same_model, 2) if not p2p(i, j)]
    if missing:
        warnings.append(
            "no P2P between GPU " + ", ".join(f"{i}-{j}" for i, j in missing)
            + ": tensor parallelism across them would go through host memory; the group is limited to GPUs "
            + ",".join(str(i) for i in chosen)
        )
    if tp > 1 and not all(nvl(i, j) for i, j in combinations(chosen, 2)):
        warnings.append(
            f"tensor parallel over PCIe P2P without NVLink between GPUs {','.join(map(str, chosen))}: every "
            "prefill all-reduce crosses PCIe (seed 002: ~2 s time to first token at TP=4 on RTX 4090s, "
            "roughly 50-100 ms expected with NVLink); batched throughput suffers far less"
        )
    if len(best) > tp:
        warnings.append(f"{len(best)} GPUs reach each other peer to peer; tensor-parallel size rounded down to {tp} (a power of two)")

    display = any(gpus[i].get("display") for i in chosen)
    util = UTIL_DISPLAY if display else UTIL_HEADLESS
    canonical = gpus[chosen[0]].get("canonical")
    out: dict[str, Any] = {
        "gpus": chosen,
        "gpu": canonical or gpus[chosen[0]]["name"],
        "tensor_parallel_size": tp,
        "p2p_group": sorted(best, key=lambda i: _bus_key(gpus[i]["pci_bus_id"])),
        "nvlink": tp > 1 and all(nvl(i, j) for i, j in combinations(chosen, 2)),
        "env": {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in chosen),
            "NCCL_NVLS_ENABLE": "0",
        },
        "serve": {"gpu-memory-utilization": util, "tensor-parallel-size": tp},
        "warnings": warnings,
        "variants": [],
    }
    if canonical is None:
        warnings.append(f"GPU name {gpus[chosen[0]]['name']!r} is not in facts/gpus.json")
    for v in variants or []:
        out["variants"].append(_judge_variant(v, result, out))
    return out


def _variant_fields(v: Any) -> dict[str, Any]:
    """name, gpu, count, cuda, tp, heads of a target variant (object from builder.expand, or a dict)."""
    if isinstance(v, dict):
        return v
    spec = v.spec
    plat = spec.platform
    serve = dict(getattr(spec, "serve", None) or {})
    cfg = dict(getattr(spec.model, "config", None) or {})
    cfg = cfg.get("text_config", cfg) if "num_attention_heads" not in cfg else cfg
    return {
        "name": v.name,
        "gpu": plat.gpu,
        "count": plat.count,
        "cuda": getattr(plat, "cuda", None),
        "tp": int(serve.get("tensor-parallel-size", 1)),
        "heads": cfg.get("num_attention_heads"),
        "kv_heads": cfg.get("num_key_value_heads"),
    }


def _judge_variant(v: Any, result: dict[str, Any], sug: dict[str, Any]) -> dict[str, Any]:
    f = _variant_fields(v)
    verdict: dict[str, Any] = {"name": f["name"], "status": "ok", "reasons": []}
    if f.get("gpu") is None:
        verdict.update(status="other", reasons=["cpu target: runs on any host"])
        return verdict
    cuda = f.get("cuda")
    if cuda:
        need = driver_min_for_cuda(cuda)
        have = result.get("driver_version")
        if need is None:
            verdict["reasons"].append(f"CUDA {cuda} not in facts/cuda.json: driver not checked")
        elif have and version_tuple(have) < version_tuple(need):
            verdict["status"] = "refused"
            verdict["reasons"].append(
                f"driver {have} is too old for CUDA {cuda} (needs >= {need} on Linux); upgrade the driver or pick a variant with older CUDA"
            )
    want = canonical_gpu(f["gpu"]) or f["gpu"]
    have_same = [g for g in result["gpus"] if (g.get("canonical") or g["name"]) == want and not g.get("display")]
    if not have_same:
        have_same = [g for g in result["gpus"] if (g.get("canonical") or g["name"]) == want]
    if not have_same:
        if verdict["status"] == "ok":
            verdict["status"] = "mismatch"
        verdict["reasons"].append(f"needs {f.get('count', 1)}x {want}; this host has none")
    elif len(have_same) < int(f.get("count") or 1):
        if verdict["status"] == "ok":
            verdict["status"] = "mismatch"
        verdict["reasons"].append(f"needs {f['count']}x {want}; this host has {len(have_same)} usable")
    tp = int(f.get("tp") or 1)
    if tp > 1 and sug.get("gpu") == want and tp > sug["tensor_parallel_size"]:
        if verdict["status"] == "ok":
            verdict["status"] = "mismatch"
        verdict["reasons"].append(f"tensor-parallel-size {tp} but only {sug['tensor_parallel_size']} GPUs reach each other peer to peer")
    for key in ("heads", "kv_heads"):
        if f.get(key) and tp > 1 and f[key] % tp and not (key == "kv_heads" and tp % f[key] == 0):
            verdict["status"] = "refused"
            verdict["reasons"].append(f"tensor-parallel-size {tp} does not divide the model's {key.replace('_', ' ')} ({f[key]})")
    return verdict


def check_driver(result: dict[str, Any], cuda: str) -> None:
    """Raise DriverTooOldError when the probed driver cannot run CUDA ``cuda``."""
    need = driver_min_for_cuda(cuda)
    have = result.get("driver_version")
    if need and have and version_tuple(have) < version_tuple(need):
        raise DriverTooOldError(f"driver {have} is too old for CUDA {cuda}: needs >= {need} on Linux (facts/cuda.json)")


# ---------------------------------------------------------------- text

def format_text(result: dict[str, Any], sug: dict[str, Any]) -> str:
    lines = [f"driver {result['driver_version']}, CUDA driver API {result['cuda_driver_version']}, {result['gpu_count']} GPU(s)"]
    for g in result["gpus"]:
        nvl = g["nvlink"]
        lines.append(
            f"  GPU {g['index']} {g['pci_bus_id']} {g['name']} ({g.get('canonical') or 'unknown to gpus.json'}) "
            f"{g['memory_total_bytes'] / 2**30:.1f} GiB, SM {g.get('compute_capability')}, "
            f"display {'yes' if g.get('display') else 'no'}, "
            f"NVLink {'not supported' if not nvl['supported'] else str(nvl['active']) + '/' + str(nvl['links']) + ' links active'}"
        )
    for p in result["pairs"]:
        lines.append(
            f"  GPU {p['a']}<->{p['b']}: {p['smi']:5} topology {p['topology']}, P2P {'yes' if p['p2p'] else 'no'}"
            f" (read {p['p2p_read']}, write {p['p2p_write']}), NVLink {'yes' if p['nvlink'] else 'no'}"
        )
    env = " ".join(f"{k}={v}" for k, v in sug["env"].items())
    lines.append(f"suggest: {env} vllm serve ... --tensor-parallel-size {sug['tensor_parallel_size']} "
                 f"--gpu-memory-utilization {sug['serve']['gpu-memory-utilization']}")
    for w in sug["warnings"]:
        lines.append(f"warning: {w}")
    for v in sug["variants"]:
        lines.append(f"target {v['name']}: {v['status']}" + (": " + "; ".join(v["reasons"]) if v["reasons"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m builder.probe [--json] [--record FILE]``: works with only pynvml installed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    record_to = argv[argv.index("--record") + 1] if "--record" in argv else None
    try:
        reader = PynvmlReader()
        if record_to:
            Path(record_to).write_text(json.dumps(record(reader), indent=2, sort_keys=True) + "\n")
        result = probe(reader)
    except NoDriverError as exc:
        print(f"imgforge probe: {exc}", file=sys.stderr)
        return exc.exit_code
    sug = suggest(result)
    if as_json:
        print(json.dumps({"probe": result, "suggestion": sug}, indent=2, sort_keys=True))
    else:
        print(format_text(result, sug))
    return 0


if __name__ == "__main__":
    sys.exit(main())
