"""`imgforge plan`: will this model fit these GPUs under vLLM, before anything is downloaded.

The model is vLLM's own start-up accounting (``worker.py: model weights take X GiB;
non_torch_memory takes Y GiB; PyTorch activation peak memory takes Z GiB; the rest of the memory
reserved for KV Cache is K GiB``)::

    K = cuda_total x gpu_memory_utilization - weights - non_torch - activation_peak

* ``cuda_total`` is what CUDA reports (``cudaMemGetInfo``), a little less than NVML's total:
  ``cuda_total_bytes`` in facts/gpus.json where measured (H200: 615 MiB less than NVML),
  otherwise NVML's total less ``CUDA_RESERVED_BYTES`` (that same 615 MiB).
* ``weights`` per GPU: parameters counted from config.json, layer by layer. Linear layers of
  attention and MLP/experts are split by tensor parallelism (K/V projections are replicated once
  KV heads < TP); quantized linear layers take bits/8 bytes a weight plus, per group, a 16-bit
  scale and a packed zero point (AWQ, GPTQ) or an fp8 scale (NVFP4); embeddings and lm_head stay
  in the model dtype and are split by vocabulary (padded to 64 rows); norms and MoE routers are
  replicated.
* ``non_torch`` (NCCL and custom all-reduce buffers, cuBLAS workspace): 0.32 GiB with TP > 1 (seed
  003's log), 0.15 GiB on one GPU (estimate).
* ``activation_peak``: vLLM profiles one forward pass of ``max_num_batched_tokens`` tokens
  (V0 without chunked prefill: ``max(max_model_len, 2048)``; with chunked prefill, which V0 turned
  on above 32k context and V1 always uses, 8192 for the API server). The peak sits in the last
  MLP: residual, its input, down-projection output and its all-reduce copy (4 x hidden) plus the
  gate/up output (2 x intermediate per GPU), the activation output and one more
  intermediate-sized temporary (4 x intermediate in all), in the activation dtype. The last
  intermediate-sized term is what seed 003's logged peak (5.66 GiB) shows beyond the first
  three; it is the model's one calibrated term. MoE layers use fused-MoE's caches
  (top_k x (3 x moe_intermediate/TP + hidden) per token, at most 32768 tokens a chunk). The
  sampler's dummy run (``max_num_seqs`` x vocab float32 logits, about 3 copies) counts when larger.
* KV cache per token per GPU: ``2 x layers x kv_heads_per_gpu x head_dim x bytes`` (fp8 → 1 byte);
  MLA (DeepSeek-V2/V3, Mistral Small 4): ``layers x (kv_lora_rank + qk_rope_head_dim) x bytes``,
  replicated on every GPU, not split by TP.

CUDA graphs are captured after the KV cache is allocated, out of the 1 - utilization headroom.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import ConfigError, UsageError

GIB = 2**30
FACTS_DIR = Path(__file__).resolve().parent / "facts"
CUDA_RESERVED_BYTES = 615 * 2**20  # NVML total - cudaMemGetInfo total, measured on an H200 (tests/fixtures/probe)
NON_TORCH_TP1 = 0.15 * GIB
NON_TORCH_TP = 0.32 * GIB  # seed 003: "non_torch_memory takes 0.32GiB" at TP=2
VOCAB_PAD = 64
FUSED_MOE_CHUNK = 32768
BLOCK = 16  # vLLM's default KV block size (tokens)

DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}
FP8_KV = {"fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"}
# quantization names vLLM accepts that store the same bytes as another
QUANT_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "gptq_marlin_24": "gptq", "marlin": "gptq",
                 "fbgemm_fp8": "fp8", "ptpc_fp8": "fp8", "modelopt": "fp8", "modelopt_fp4": "nvfp4"}


def gpu_facts() -> dict[str, dict[str, Any]]:
    return json.loads((FACTS_DIR / "gpus.json").read_text(encoding="utf-8"))["gpus"]


def _norm(s: str) -> str:
    return "".join(s.lower().split()).replace("nvidia", "").replace("geforce", "")


def resolve_gpu(name: str) -> tuple[str, dict[str, Any]]:
    facts = gpu_facts()
    wanted = _norm(name)
    for key, info in facts.items():
        if _norm(key) == wanted or any(_norm(a) == wanted for a in info.get("aliases", [])):
            return key, info
    raise UsageError(f"unknown GPU {name!r} (allowed: {', '.join(sorted(facts))})")


# ------------------------------------------------------------------ architecture

@dataclass
class Arch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    tie: bool
    dtype_bytes: int
    max_pos: int | None
    experts: int = 0
    moe_intermediate: int = 0
    top_k: int = 0
    shared_intermediate: int = 0  # total width of shared experts (0: none)
    dense_layers: int = 0  # leading dense layers before MoE (first_k_dense_replace)
    moe_every: int = 1
    mla: bool = False
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope: int = 0
    qk_rope: int = 0
    v_head_dim: int = 0
    qkv_bias: bool = False
    notes: list[str] = field(default_factory=list)

    def missing_for_weights(self, config: dict) -> list[str]:
        """Keys whose absence makes a parameter count a guess."""
        c, _ = _text(config)
        out = [k for k in ("vocab_size",) if not c.get(k)]
        if self.experts and not c.get("moe_intermediate_size") and not c.get("intermediate_size"):
            out.append("moe_intermediate_size")
        if not self.experts and not c.get("intermediate_size"):
            out.append("intermediate_size")
        if self.mla and not (c.get("qk_nope_head_dim") and c.get("v_head_dim")):
            out += [k for k in ("qk_nope_head_dim", "v_head_dim") if not c.get(k)]
        return out


def _text(config: dict) -> tuple[dict, list[str]]:
    notes = []
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        inner = dict(config["text_config"])
        for k in ("quantization_config", "torch_dtype", "tie_word_embeddings"):
            if k in config and k not in inner:
                inner[k] = config[k]
        notes.append("multimodal config: text_config planned; the vision/audio encoder is not counted")
        return inner, notes
    return config, notes


def arch_from_config(config: dict) -> Arch:
    c, notes = _text(config)
    need = ("num_hidden_layers", "hidden_size", "num_attention_heads")
    missing = [k for k in need if k not in c]
    if missing:
        raise ConfigError("config.json", missing[0], None, "missing key the plan needs", ", ".join(need))
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16").replace("torch.", "")
    experts = int(c.get("num_local_experts") or c.get("n_routed_experts") or c.get("num_experts") or 0)
    moe_inter = int(c.get("moe_intermediate_size") or (c.get("intermediate_size") if experts else 0) or 0)
    shared = 0
    if c.get("n_shared_experts"):
        shared = int(c["n_shared_experts"]) * moe_inter
    elif c.get("shared_expert_intermediate_size"):
        shared = int(c["shared_expert_intermediate_size"])
    a = Arch(
        layers=int(c["num_hidden_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        vocab=int(c.get("vocab_size") or 0),
        intermediate=int(c.get("intermediate_size") or 4 * hidden),
        tie=bool(c.get("tie_word_embeddings", False)),
        dtype_bytes=DTYPE_BYTES.get(dtype, 2),
        max_pos=c.get("max_position_embeddings"),
        experts=experts,
        moe_intermediate=moe_inter,
        top_k=int(c.get("num_experts_per_tok") or c.get("moe_topk") or (2 if experts else 0)),
        shared_intermediate=shared,
        dense_layers=int(c.get("first_k_dense_replace") or 0),
        moe_every=int(c.get("moe_layer_freq") or c.get("decoder_sparse_step") or 1),
        mla=bool(c.get("kv_lora_rank")),
        kv_lora_rank=int(c.get("kv_lora_rank") or 0),
        q_lora_rank=int(c.get("q_lora_rank") or 0),
        qk_nope=int(c.get("qk_nope_head_dim") or 0),
        qk_rope=int(c.get("qk_rope_head_dim") or 0),
        v_head_dim=int(c.get("v_head_dim") or 0),
        qkv_bias=bool(c.get("attention_bias")) or c.get("model_type") in ("qwen2", "qwen2_moe"),
        notes=notes,
    )
    return a


# ------------------------------------------------------------------ quantization

@dataclass
class Quant:
    method: str | None  # None: unquantized
    bits: float  # weight bits of quantized linear layers
    group: int  # weights per scale group (0: per channel / tensor)
    scale_bytes: float
    zero_bits: float  # packed zero point per group
    known: bool = True  # False: the config does not say how many bits


def quant_from(config: dict, quantization: str | None) -> Quant:
    c, _ = _text(config)
    qc = c.get("quantization_config") or config.get("quantization_config") or {}
    method = quantization or qc.get("quant_method")
    if method is None:
        return Quant(None, 0, 0, 0, 0)
    method = QUANT_ALIASES.get(method, method)
    if method in ("awq", "gptq"):
        bits = int(qc.get("bits") or qc.get("w_bit") or 4)
        group = int(qc.get("group_size") or qc.get("q_group_size") or 128)
        # AWQ keeps a zero point per group always, GPTQ checkpoints store qzeros too
        return Quant(method, bits, group if group > 0 else 0, 2, bits)
    if method in ("fp8", "fbgemm_fp8"):
        return Quant("fp8", 8, 0, 0, 0)
    if method == "nvfp4":
        return Quant("nvfp4", 4, 16, 1, 0)
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        w = next(iter(groups.values()), {}).get("weights", {}) if groups else {}
        if not w and (qc.get("bits") or "fp4" in str(qc.get("format", ""))):
            # the short form targets carry: {quant_method, bits, group_size, format}
            w = {"num_bits": qc.get("bits") or 4, "group_size": qc.get("group_size") or 0,
                 "type": "float" if "fp4" in str(qc.get("format", "")) else "int"}
        if not w:
            return Quant("compressed-tensors", 8, 0, 0, 0, known=False)
        bits = int(w.get("num_bits") or 8)
        group = int(w.get("group_size") or 0)
        if bits == 4 and w.get("type") == "float":
            return Quant("nvfp4", 4, group or 16, 1, 0)
        zero = 0 if w.get("symmetric", True) else bits
        return Quant(f"compressed-tensors/w{bits}", bits, group, 2 if group else 0, zero)
    if method == "bitsandbytes":
        bits = 4 if qc.get("load_in_4bit", True) else 8
        return Quant("bitsandbytes", bits, 64, 4, 0)
    if method in ("gguf",):
        raise UsageError("gguf: plan counts safetensors checkpoints only")
    bits = qc.get("bits")
    if bits:
        return Quant(method, int(bits), int(qc.get("group_size") or 128), 2, int(bits))
    raise UsageError(f"quantization {method!r} is not modelled (modelled: awq, gptq, fp8, nvfp4, compressed-tensors, bitsandbytes)")


def _linear_bytes(params: float, q: Quant, dtype_bytes: int) -> float:
    if q.method is None:
        return params * dtype_bytes
    b = params * q.bits / 8
    if q.group:
        b += params / q.group * (q.scale_bytes + q.zero_bits / 8)
    return b


# ------------------------------------------------------------------ counting

def _kv_heads_per_gpu(a: Arch, tp: int) -> int:
    return max(1, math.ceil(a.kv_heads / tp))


def weight_bytes_per_gpu(a: Arch, q: Quant, tp: int) -> dict[str, float]:
    """Bytes of one GPU's shard, by part; and the parameter count of the whole model."""
    linear = 0.0  # split quantizable linear params on this GPU
    replicated_linear = 0.0  # quantizable but replicated (MLA down projections)
    dense_params = 0.0  # unquantized params on this GPU (biases, routers, norms)
    total_params = 0.0
    h, hd = a.hidden, a.head_dim
    for layer in range(a.layers):
        # attention
        if a.mla:
            qk_head = a.qk_nope + a.qk_rope
            if a.q_lora_rank:
                q_full = h * a.q_lora_rank + a.q_lora_rank * a.heads * qk_head
                replicated_linear += h * a.q_lora_rank
                linear += a.q_lora_rank * a.heads * qk_head / tp
                dense_params += a.q_lora_rank
            else:
                q_full = h * a.heads * qk_head
                linear += q_full / tp
            kv_a = h * (a.kv_lora_rank + a.qk_rope)
            kv_b = a.kv_lora_rank * a.heads * (a.qk_nope + a.v_head_dim)
            o = a.heads * a.v_head_dim * h
            replicated_linear += kv_a
            linear += (kv_b + o) / tp
            dense_params += a.kv_lora_rank
            total_params += q_full + kv_a + kv_b + o + a.kv_lora_rank + (a.q_lora_rank or 0)
        else:
            qo = 2 * h * a.heads * hd
            kv = 2 * h * a.kv_heads * hd
            linear += qo / tp + 2 * h * _kv_heads_per_gpu(a, tp) * hd
            total_params += qo + kv
            if a.qkv_bias:
                dense_params += (a.heads / tp + 2 * _kv_heads_per_gpu(a, tp)) * hd
                total_params += (a.heads + 2 * a.kv_heads) * hd
        # MLP or experts
        is_moe = a.experts and layer >= a.dense_layers and (layer - a.dense_layers) % a.moe_every == 0
        if is_moe:
            e = a.experts * 3 * h * a.moe_intermediate
            s = 3 * h * a.shared_intermediate
            router = a.experts * h
            linear += (e + s) / tp
            dense_params += router
            total_params += e + s + router
        else:
            m = 3 * h * a.intermediate
            linear += m / tp
            total_params += m
        dense_params += 2 * h  # two RMSNorms
        total_params += 2 * h
    dense_params += h  # final norm
    total_params += h
    vocab_rows = math.ceil(a.vocab / VOCAB_PAD) * VOCAB_PAD
    embed = vocab_rows * h / tp
    head = 0 if a.tie else vocab_rows * h / tp
    total_params += a.vocab * h * (1 if a.tie else 2)
    out = {
        "linear": _linear_bytes(linear, q, a.dtype_bytes) + _linear_bytes(replicated_linear, q, a.dtype_bytes),
        "embeddings": (embed + head) * a.dtype_bytes,
        "other": dense_params * a.dtype_bytes,
    }
    out["total"] = out["linear"] + out["embeddings"] + out["other"]
    out["params"] = total_params
    return out


def weight_bytes_total(a: Arch, q: Quant) -> float:
    return weight_bytes_per_gpu(a, q, 1)["total"]


def kv_bytes_per_token(a: Arch, tp: int, kv_cache_dtype: str = "auto") -> float:
    b = 1 if kv_cache_dtype in FP8_KV else (DTYPE_BYTES.get(kv_cache_dtype) or a.dtype_bytes)
    if a.mla:
        return a.layers * (a.kv_lora_rank + a.qk_rope) * b
    return 2 * a.layers * _kv_heads_per_gpu(a, tp) * a.head_dim * b


def activation_peak_bytes(a: Arch, tp: int, tokens: int, max_num_seqs: int) -> float:
    act = 2 if a.dtype_bytes >= 2 else 2  # activations run in 16-bit
    hidden_part = 4 * a.hidden
    if a.experts:
        tc = min(tokens, FUSED_MOE_CHUNK)
        moe = tc * a.top_k * (3 * a.moe_intermediate / tp + a.hidden) * act
        shared = tokens * 4 * a.shared_intermediate / tp * act
        mlp = max(moe + shared, tokens * 4 * (a.intermediate / tp) * act if a.dense_layers else 0)
    else:
        mlp = tokens * 4 * (a.intermediate / tp) * act
    forward = tokens * hidden_part * act + mlp
    sampler = max_num_seqs * a.vocab * 4 * 3
    return max(forward, sampler)


# ------------------------------------------------------------------ plan

@dataclass
class Plan:
    model: str
    gpu: str
    tp: int
    quantization: str | None
    kv_cache_dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    params_b: float | None  # None when the config is too incomplete to count
    weights_gib_total: float
    weights_gib_per_gpu: float
    memory_gib: float
    cuda_total_gib: float
    budget_gib: float
    non_torch_gib: float
    activation_gib: float
    kv_cache_gib_per_gpu: float
    kv_bytes_per_token: float
    kv_cache_tokens: int
    max_full_length_sequences: int
    fits: bool
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 3)
        return d


def plan_model(
    config: dict,
    *,
    gpu: str,
    tp: int = 1,
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int | None = None,
    weights_gib: float | None = None,
    model_name: str | None = None,
    engine: str = "v0",
) -> Plan:
    """Plan one model on ``tp`` GPUs of one kind (see the module docstring for the model).

    ``engine``: "v0" profiles ``max(max_model_len, 2048)`` tokens up to 32k context (vLLM V0 without
    chunked prefill, as in seed 003); "v1" (vLLM >= 0.8) profiles 8192 tokens, the API server's
    chunked-prefill default. ``max_num_batched_tokens`` overrides both.
    """
    if tp < 1:
        raise UsageError(f"tensor-parallel size must be >= 1, got {tp}")
    if not 0 < gpu_memory_utilization <= 1:
        raise UsageError(f"gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
    gpu_name, info = resolve_gpu(gpu)
    a = arch_from_config(config)
    q = quant_from(config, quantization)
    notes = list(a.notes)
    if a.heads % tp:
        notes.append(f"vLLM refuses tensor-parallel size {tp}: it must divide the {a.heads} attention heads")
    if q.group and q.method in ("awq", "gptq") and (a.intermediate // tp) % q.group and not a.experts:
        notes.append(f"vLLM refuses this split: intermediate_size {a.intermediate} / TP {tp} is not a multiple of the "
                     f"quantization group size {q.group} (quantized checkpoints pad it, e.g. Qwen2.5-72B-AWQ to 29696)")
    w = weight_bytes_per_gpu(a, q, tp)
    total = weight_bytes_total(a, q)
    missing = a.missing_for_weights(config)
    if missing or not q.known:
        why = f"config.json lacks {', '.join(missing)}" if missing else "the quantization config does not say how many bits"
        if not weights_gib:
            raise ConfigError("config.json", missing[0] if missing else "quantization_config", None,
                              f"{why}: give it, or the expected weights_gib")
        notes.append(f"{why}: weights taken from the expected {weights_gib:.2f} GiB, split evenly by TP")
        total = weights_gib * GIB
        w = {"total": total / tp, "params": None}
    elif weights_gib:
        ratio = total / GIB / weights_gib
        if abs(ratio - 1) > 0.10:
            notes.append(f"counted weights {total / GIB:.2f} GiB differ from the expected {weights_gib:.2f} GiB by {100 * (ratio - 1):+.0f}%")
    mml = int(max_model_len or a.max_pos or 4096)
    if max_num_batched_tokens:
        tokens = int(max_num_batched_tokens)
    elif engine == "v1":
        tokens = 8192  # V1: chunked prefill always, the API server's default budget
    elif mml <= 32768:
        tokens = max(mml, 2048)  # V0 without chunked prefill (seed 003)
    else:
        tokens = 8192  # chunked prefill (V0 above 32k context, V1 always): the API server's default
    if info.get("unified_memory"):
        notes.append(f"{gpu_name} shares its memory with the CPU: the OS and other processes use the same pool, "
                     "so what is free at start-up bounds the KV cache more than this total")
    mem = int(info["memory_bytes"])
    cuda_total = int(info.get("cuda_total_bytes") or (mem - CUDA_RESERVED_BYTES))
    budget = cuda_total * gpu_memory_utilization
    non_torch = NON_TORCH_TP if tp > 1 else NON_TORCH_TP1
    act = activation_peak_bytes(a, tp, tokens, max_num_seqs)
    kv = budget - w["total"] - non_torch - act
    per_tok = kv_bytes_per_token(a, tp, kv_cache_dtype)
    kv_tokens = max(0, int(kv // per_tok) // BLOCK * BLOCK) if kv > 0 else 0
    full = kv_tokens // mml
    fits = kv > 0 and kv_tokens >= mml
    where = f"{tp}x {gpu_name}" if tp > 1 else f"one {gpu_name}"
    head = (f"{gpu_name}: {mem / GIB:.2f} GiB, {cuda_total / GIB:.2f} GiB visible to CUDA x {gpu_memory_utilization} = "
            f"{budget / GIB:.2f} GiB per GPU")
    wg = w["total"] / GIB
    if wg + non_torch / GIB >= budget / GIB:
        min_tp = 1
        while min_tp < 64 and weight_bytes_per_gpu(a, q, min_tp)["total"] + NON_TORCH_TP >= budget:
            min_tp *= 2
        verdict = (f"does not fit: the weights alone take {wg:.2f} GiB per GPU on {where}, more than the "
                   f"{budget / GIB:.2f} GiB budget ({head}); it needs at least tensor-parallel size {min_tp} of this GPU")
    elif not fits:
        verdict = (f"does not fit: after {wg:.2f} GiB of weights and {act / GIB:.2f} GiB of activations the KV cache gets "
                   f"{max(kv, 0) / GIB:.2f} GiB = {kv_tokens:,} tokens per GPU on {where}, fewer than max-model-len "
                   f"{mml:,}; lower max-model-len to {kv_tokens:,} or less, use an fp8 KV cache, or add GPUs")
    else:
        verdict = (f"fits: {wg:.2f} GiB weights + {kv / GIB:.2f} GiB KV cache per GPU on {where} = {kv_tokens:,} tokens, "
                   f"{full} sequence(s) of the full {mml:,} tokens at once")
    return Plan(
        model=model_name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
        gpu=gpu_name,
        tp=tp,
        quantization=q.method,
        kv_cache_dtype=kv_cache_dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=mml,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=tokens,
        params_b=w["params"] / 1e9 if w["params"] else None,
        weights_gib_total=total / GIB,
        weights_gib_per_gpu=wg,
        memory_gib=mem / GIB,
        cuda_total_gib=cuda_total / GIB,
        budget_gib=budget / GIB,
        non_torch_gib=non_torch / GIB,
        activation_gib=act / GIB,
        kv_cache_gib_per_gpu=max(kv, 0) / GIB,
        kv_bytes_per_token=per_tok,
        kv_cache_tokens=kv_tokens,
        max_full_length_sequences=full,
        fits=fits,
        verdict=verdict,
        notes=notes,
    )


def format_text(p: Plan) -> str:
    lines = [
        f"{p.model} on {p.tp}x {p.gpu} (quantization {p.quantization or 'none'}, KV cache {p.kv_cache_dtype}, "
        f"utilization {p.gpu_memory_utilization}, max-model-len {p.max_model_len:,})",
        f"  parameters        {f'{p.params_b:.2f} B' if p.params_b else 'not counted'} ({p.weights_gib_total:.2f} GiB in all)",
        f"  per GPU budget    {p.budget_gib:.2f} GiB ({p.cuda_total_gib:.2f} GiB visible to CUDA of {p.memory_gib:.2f})",
        f"  weights           {p.weights_gib_per_gpu:.2f} GiB",
        f"  non-torch         {p.non_torch_gib:.2f} GiB",
        f"  activation peak   {p.activation_gib:.2f} GiB ({p.max_num_batched_tokens:,} tokens profiled)",
        f"  KV cache          {p.kv_cache_gib_per_gpu:.2f} GiB = {p.kv_cache_tokens:,} tokens ({p.kv_bytes_per_token / 1024:.1f} KiB a token)",
        f"  verdict           {p.verdict}",
    ]
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
