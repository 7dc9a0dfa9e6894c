"""Memory preflight: seed figures, published model sizes, and the fit decisions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from builder.cmd_plan import cmd, plan_variant
from builder.errors import ImgforgeError, UsageError
from builder.plan import GIB, plan_model

MODELS = Path(__file__).parent / "fixtures" / "models"


def model(name: str) -> dict:
    return json.loads((MODELS / f"{name}.json").read_text())


def within(value: float, expected: float, pct: float) -> bool:
    return abs(value - expected) <= abs(expected) * pct / 100


# ---------------------------------------------------------------- seed 003 and seed 001

def test_seed_003_qwen72b_awq_tp2_a40_matches_vllm_log():
    # vLLM 0.7.2 log: "model weights take 19.40GiB; non_torch_memory takes 0.32GiB; PyTorch activation
    # peak memory takes 5.66GiB; the rest of the memory reserved for KV Cache is 14.63GiB."
    p = plan_model(model("qwen2.5-72b-instruct-awq"), gpu="A40", tp=2, max_model_len=32768)
    assert within(p.weights_gib_per_gpu, 19.40, 5), p.weights_gib_per_gpu
    assert within(p.kv_cache_gib_per_gpu, 14.63, 5), p.kv_cache_gib_per_gpu
    assert p.fits
    assert p.quantization == "awq"  # read from config.json's quantization_config


def test_seed_003_whole_checkpoint_matches_du():
    # seed 003: `du -sh Qwen2.5-72B-Instruct-AWQ/` -> 39G
    p = plan_model(model("qwen2.5-72b-instruct-awq"), gpu="A40", tp=2)
    assert within(p.weights_gib_total, 39.0, 3)


def test_seed_001_qwen72b_awq_on_one_rtx4090_cannot_fit():
    # seed 001 claims "18.4 GB weights + 5.6 GB KV cache at 8192 context = 24 GB flat" on one RTX 4090
    p = plan_model(model("qwen2.5-72b-instruct-awq"), gpu="RTX 4090", tp=1, max_model_len=8192,
                   gpu_memory_utilization=0.95)
    assert not p.fits
    assert p.weights_gib_per_gpu > 36  # the 4-bit weights alone are ~39 GiB (seed 003's du)
    assert p.weights_gib_per_gpu > 2 * 18.4 / 1.074  # more than twice the seed's "18.4 GB"
    assert p.weights_gib_per_gpu > p.budget_gib
    assert p.kv_cache_tokens == 0
    assert p.verdict.startswith("does not fit")
    assert f"{p.weights_gib_per_gpu:.2f} GiB" in p.verdict and f"{p.budget_gib:.2f} GiB" in p.verdict
    assert "tensor-parallel size 2" in p.verdict
    # the seed's KV figure is off too: 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 320 KiB a token,
    # 2.5 GiB per 8192-token sequence, not 5.6 GB for 256 of them
    assert p.kv_bytes_per_token == 320 * 1024
    assert p.kv_bytes_per_token * 8192 / GIB == pytest.approx(2.5)


def test_same_model_fits_two_a40_but_not_two_rtx4090_at_32k():
    cfg = model("qwen2.5-72b-instruct-awq")
    assert plan_model(cfg, gpu="A40", tp=2, max_model_len=32768).fits
    p = plan_model(cfg, gpu="RTX 4090", tp=2, max_model_len=32768)
    assert not p.fits


# ---------------------------------------------------------------- models the targets do not use

def test_dense_bf16_llama31_8b_published_size():
    # Llama-3.1-8B: 8,030,261,248 parameters (model card: 8.03B); bf16 -> 16.06 GB = 14.96 GiB
    p = plan_model(model("llama-3.1-8b"), gpu="H100-80GB", tp=1, max_model_len=8192)
    assert within(p.params_b, 8.030, 0.1)
    assert within(p.weights_gib_total, 14.96, 1)
    # GQA: 32 layers x 8 KV heads x 128 x 2 x 2 bytes = 128 KiB a token (MHA would be 512 KiB)
    assert p.kv_bytes_per_token == 128 * 1024
    assert p.fits and p.max_full_length_sequences > 10


def test_gptq_llama2_7b_matches_checkpoint_file():
    # TheBloke/Llama-2-7B-GPTQ main branch: model.safetensors is 3.90 GB (4-bit, group 128)
    p = plan_model(model("llama-2-7b-gptq"), gpu="RTX 4090", tp=1)
    assert p.quantization == "gptq"
    assert within(p.weights_gib_total * GIB / 1e9, 3.90, 3)
    # Llama 2 7B is plain multi-head attention: 32 x 32 x 128 x 2 x 2 bytes = 512 KiB a token
    assert p.kv_bytes_per_token == 512 * 1024


def test_quantization_flag_overrides_config():
    cfg = model("llama-3.1-8b")
    bf16 = plan_model(cfg, gpu="L40S")
    fp8 = plan_model(cfg, gpu="L40S", quantization="fp8")  # vLLM's online fp8 of the linear layers
    assert fp8.quantization == "fp8" and bf16.quantization is None
    assert fp8.weights_gib_total < bf16.weights_gib_total * 0.6


def test_fp8_checkpoint_keeps_embeddings_16bit():
    # 6.98 B linear weights at 1 byte + 2 x 128256 x 4096 embedding/lm_head weights at 2 bytes = 9.08 GB
    p = plan_model(model("llama-3.1-8b-instruct-fp8"), gpu="L40S", tp=1, max_model_len=8192)
    assert within(p.weights_gib_total * GIB / 1e9, 9.08, 2)


def test_fp8_kv_cache_halves_bytes_per_token_and_doubles_tokens():
    cfg = model("llama-3.1-8b")
    auto = plan_model(cfg, gpu="L40S", max_model_len=8192)
    fp8 = plan_model(cfg, gpu="L40S", max_model_len=8192, kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token * 2 == auto.kv_bytes_per_token
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, rel=0.01)


def test_moe_mixtral_8x7b_published_size():
    # Mistral AI: Mixtral 8x7B has 46.7B total parameters; bf16 -> 93.4 GB
    p = plan_model(model("mixtral-8x7b-v0.1"), gpu="H100-80GB", tp=2, max_model_len=32768)
    assert within(p.params_b, 46.7, 0.5)
    assert within(p.weights_gib_per_gpu, 46.7e9 * 2 / GIB / 2, 1.5)
    assert p.fits
    assert not plan_model(model("mixtral-8x7b-v0.1"), gpu="H100-80GB", tp=1).fits  # 87 GiB > 80


def test_mla_deepseek_v2_lite_published_size_and_latent_kv():
    # DeepSeek-V2-Lite model card: 15.7B total parameters; KV cache is the compressed latent:
    # 27 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes = 31,104 bytes a token
    cfg = model("deepseek-v2-lite")
    p1 = plan_model(cfg, gpu="H100-80GB", tp=1, max_model_len=32768)
    p2 = plan_model(cfg, gpu="H100-80GB", tp=2, max_model_len=32768)
    assert within(p1.params_b, 15.7, 1)
    assert p1.kv_bytes_per_token == 27 * 576 * 2
    assert p2.kv_bytes_per_token == p1.kv_bytes_per_token  # not split by tensor parallelism
    assert p2.weights_gib_per_gpu < 0.55 * p1.weights_gib_per_gpu


def test_gqa_kv_heads_replicated_beyond_tp():
    cfg = model("llama-3.1-8b")  # 8 KV heads
    per_tok = {tp: plan_model(cfg, gpu="H100-80GB", tp=tp).kv_bytes_per_token for tp in (1, 2, 8)}
    assert per_tok[2] == per_tok[1] / 2
    assert per_tok[8] == 2 * 32 * 1 * 128 * 2
    cfg16 = dict(cfg, num_attention_heads=64, num_key_value_heads=8, head_dim=128)
    assert plan_model(cfg16, gpu="H100-80GB", tp=16).kv_bytes_per_token == per_tok[8]  # one head, replicated


def test_multimodal_text_config_is_planned():
    inner = model("llama-3.1-8b")
    wrapped = {"model_type": "llava", "text_config": inner, "torch_dtype": "bfloat16"}
    a = plan_model(inner, gpu="L40S", max_model_len=8192)
    b = plan_model(wrapped, gpu="L40S", max_model_len=8192)
    assert b.weights_gib_per_gpu == pytest.approx(a.weights_gib_per_gpu)
    assert any("text_config" in n for n in b.notes)


# ---------------------------------------------------------------- the fit decision

def test_context_longer_than_kv_capacity_does_not_fit():
    cfg = model("llama-3.1-8b")
    ok = plan_model(cfg, gpu="RTX 4090", max_model_len=8192)
    assert ok.fits and ok.max_full_length_sequences >= 1
    long = plan_model(cfg, gpu="RTX 4090", max_model_len=131072)
    assert not long.fits
    assert long.max_full_length_sequences == 0
    assert "lower max-model-len" in long.verdict and f"{long.kv_cache_tokens:,}" in long.verdict


def test_utilization_changes_kv_not_weights():
    cfg = model("llama-3.1-8b")
    lo = plan_model(cfg, gpu="RTX 4090", max_model_len=8192, gpu_memory_utilization=0.85)
    hi = plan_model(cfg, gpu="RTX 4090", max_model_len=8192, gpu_memory_utilization=0.92)
    assert lo.weights_gib_per_gpu == hi.weights_gib_per_gpu
    assert hi.kv_cache_gib_per_gpu - lo.kv_cache_gib_per_gpu == pytest.approx(0.07 * lo.cuda_total_gib, rel=1e-6)


def test_group_split_that_vllm_refuses_is_noted():
    cfg = dict(model("qwen2.5-72b-instruct-awq"), intermediate_size=29568)  # the unpadded base size
    p = plan_model(cfg, gpu="A40", tp=2)
    assert any("not a multiple of the quantization group size" in n for n in p.notes)
    assert not plan_model(model("qwen2.5-72b-instruct-awq"), gpu="A40", tp=2).notes


def test_unknown_gpu_names_value_and_allowed():
    with pytest.raises(UsageError) as e:
        plan_model(model("llama-3.1-8b"), gpu="RTX 9999")
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "'RTX 9999'" in msg and "A40" in msg and "RTX 4090" in msg and "\n" not in msg


def test_to_json_has_the_keys():
    d = plan_model(model("llama-3.1-8b"), gpu="A40").to_json()
    for k in ("weights_gib_per_gpu", "kv_cache_gib_per_gpu", "kv_cache_tokens", "fits", "max_full_length_sequences", "verdict"):
        assert k in d
    json.dumps(d)


# ---------------------------------------------------------------- CLI

def test_cli_model_config_json_reads_quantization_from_config():
    r = CliRunner().invoke(cmd, ["--model-config", str(MODELS / "qwen2.5-72b-instruct-awq.json"), "--tp", "2",
                                 "--gpu", "A40", "--max-model-len", "32768", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["quantization"] == "awq" and d["fits"] is True
    assert within(d["weights_gib_per_gpu"], 19.40, 5) and within(d["kv_cache_gib_per_gpu"], 14.63, 5)


def test_cli_not_fitting_exits_1_with_verdict():
    r = CliRunner().invoke(cmd, ["--model-config", str(MODELS / "qwen2.5-72b-instruct-awq.json"), "--tp", "1",
                                 "--gpu", "RTX 4090", "--max-model-len", "8192", "--gpu-memory-utilization", "0.95"])
    assert r.exit_code == 1
    assert "does not fit" in r.output


def test_cli_unknown_gpu_is_a_usage_error():
    r = CliRunner().invoke(cmd, ["--model-config", str(MODELS / "llama-3.1-8b.json"), "--gpu", "Voodoo2"])
    assert isinstance(r.exception, ImgforgeError) and r.exception.exit_code == 2
    assert "Voodoo2" in str(r.exception) and "H100-80GB" in str(r.exception)


def test_plan_variant_uses_the_variants_serve_flags():
    def variant(**serve):
        spec = SimpleNamespace(
            platform=SimpleNamespace(gpu="RTX 4090", count=1, cuda="12.4"),
            model=SimpleNamespace(id="meta-llama/Llama-3.1-8B", config=model("llama-3.1-8b"), weights_gib=15.0),
            serve=serve,
        )
        return SimpleNamespace(name="v", spec=spec, serve=serve)

    base = plan_variant(variant(**{"max-model-len": 16384}))
    fp8 = plan_variant(variant(**{"max-model-len": 16384, "kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.92}))
    assert base.max_model_len == 16384 and base.gpu_memory_utilization == 0.9
    assert fp8.kv_bytes_per_token * 2 == base.kv_bytes_per_token and fp8.gpu_memory_utilization == 0.92
    assert not base.notes  # weights_gib 15.0 agrees with the count
    off = plan_variant(SimpleNamespace(name="v", serve={}, spec=SimpleNamespace(
        platform=SimpleNamespace(gpu="RTX 4090", count=1), serve={},
        model=SimpleNamespace(id="x", config=model("llama-3.1-8b"), weights_gib=30.0))))
    assert any("differ from the expected" in n for n in off.notes)


def _targets_loadable() -> bool:
    try:
        from builder.expand import expand
        from builder.load import load_target

        expand(load_target("tp2-a40"))
        return True
    except Exception:  # the target pipeline is still being assembled
        return False


@pytest.mark.xfail(not _targets_loadable(), reason="target loading (builder.load/expand) not complete in this tree", strict=False)
def test_cli_target_tp2_a40():
    r = CliRunner().invoke(cmd, ["--target", "tp2-a40", "--json"])
    d = json.loads(r.output)
    gpu_plans = [x for x in d if "weights_gib_per_gpu" in x]
    assert gpu_plans
    assert all(within(x["weights_gib_per_gpu"], 19.40, 5) for x in gpu_plans)


def test_incomplete_config_uses_expected_weights_or_refuses():
    from builder.errors import ConfigError

    cfg = {"num_hidden_layers": 36, "hidden_size": 4096, "num_attention_heads": 32, "kv_lora_rank": 512,
           "qk_rope_head_dim": 64, "n_routed_experts": 128, "num_experts_per_tok": 4, "torch_dtype": "bfloat16"}
    p = plan_model(cfg, gpu="GB10", max_model_len=262144, gpu_memory_utilization=0.8, weights_gib=66)
    assert p.weights_gib_per_gpu == pytest.approx(66) and p.params_b is None
    assert p.kv_bytes_per_token == 36 * 576 * 2  # MLA latent: needs only these keys
    assert any("lacks vocab_size" in n for n in p.notes)
    with pytest.raises(ConfigError):
        plan_model(cfg, gpu="GB10")


def test_v1_engine_profiles_fewer_tokens_than_v0_at_32k():
    cfg = model("qwen2.5-72b-instruct-awq")
    v0 = plan_model(cfg, gpu="A40", tp=2, max_model_len=32768)
    v1 = plan_model(cfg, gpu="A40", tp=2, max_model_len=32768, engine="v1")
    assert (v0.max_num_batched_tokens, v1.max_num_batched_tokens) == (32768, 8192)
    assert v1.activation_gib < v0.activation_gib and v1.kv_cache_gib_per_gpu > v0.kv_cache_gib_per_gpu
