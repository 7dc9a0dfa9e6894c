"""render: the files of a stack, their headers, stability, atomic writes; levels."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder import levels
from builder.expand import deep_merge, expand
from builder.load import list_targets, load_target
from builder.render import render, render_texts

REPO = Path(__file__).resolve().parents[1]


def variants():
    return [v for t in list_targets() for v in expand(load_target(t))]


def cpu_with(tmp_path: Path, patch: dict, name: str = "cpu-x", webui=...):
    """The cpu target with a patch applied (a null removes a key), as a target file of its own."""
    data = yaml.safe_load((REPO / "targets" / "cpu.yaml").read_text())
    data = deep_merge(data, {"name": name, **patch})
    if webui is not ...:
        data["software"]["webui"] = webui
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    [v] = expand(load_target(str(p)))
    return v


def compose_of(files: dict[str, str]) -> dict:
    return yaml.safe_load(files["compose.yaml"])


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_STATE", str(tmp_path / "state"))


# ---- files and headers -------------------------------------------------------------------


def test_every_variant_renders_the_stack_files_each_with_a_header(tmp_path):
    for v in variants():
        paths = render(v, tmp_path / v.name)
        names = sorted(p.name for p in paths)
        assert names == sorted([".env.example", "README.md", "compose.yaml", "nginx.conf", f"imgforge-{v.name}.service"])
        for p in paths:
            first = p.read_text().splitlines()[0]
            assert f"target {v.target.name}, variant {v.name}, lock unlocked" in first, p
            assert first.startswith("# ") or (p.suffix == ".md" and first.startswith("<!-- ")), p


def test_header_names_the_lock_hash(tmp_path):
    v = expand(load_target("cpu"))[0]
    files = render_texts(v, lock="0123456789ab")
    for name, text in files.items():
        assert "lock 0123456789ab" in text.splitlines()[0], name
    compose = compose_of(files)
    assert {s: compose["services"][s]["image"] for s in compose["services"]} == {
        s: f"imgforge/cpu-{s}:0123456789ab" for s in ("vllm", "webui", "gateway")
    }


def test_image_refs_default_and_override():
    v = expand(load_target("cpu"))[0]
    compose = compose_of(render_texts(v))
    assert compose["services"]["vllm"]["image"] == "imgforge/cpu-vllm:unlocked"
    ref = "registry.example:5000/imgforge/cpu-vllm@sha256:" + "a" * 64
    compose = compose_of(render_texts(v, images={"vllm": ref}))
    assert compose["services"]["vllm"]["image"] == ref
    assert compose["services"]["gateway"]["image"] == "imgforge/cpu-gateway:unlocked"
    with pytest.raises(ValueError, match="unknown service"):
        render_texts(v, images={"vlm": ref})


# ---- stability -----------------------------------------------------------------------------


def test_output_is_stable_across_runs_and_directories(tmp_path):
    for v in variants():
        a = render(v, tmp_path / "a" / v.name)
        b = render(v, tmp_path / "b" / "deeper" / v.name)
        for pa, pb in zip(a, b):
            assert pa.name == pb.name
            assert pa.read_bytes() == pb.read_bytes(), pa.name
            text = pa.read_text()
            assert not re.search(r"20\d\d-\d\d-\d\dT\d\d:", text), f"timestamp in {pa}"
            assert str(tmp_path) not in text, f"output path leaked into {pa}"


def test_environment_is_sorted():
    for v in variants():
        compose = compose_of(render_texts(v))
        for name, svc in compose["services"].items():
            env = list((svc.get("environment") or {}).keys())
            assert env == sorted(env), (v.name, name)


# ---- atomic writes ----------------------------------------------------------------------------


def test_rerender_replaces_the_directory_and_leaves_no_temp_dirs(tmp_path):
    v = expand(load_target("cpu"))[0]
    out = tmp_path / "out" / "cpu"
    render(v, out)
    (out / "stale.txt").write_text("from an older render")
    paths = render(v, out)
    assert not (out / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path / "out")) == ["cpu"]
    assert all(p.is_file() for p in paths)


def test_a_failing_render_writes_nothing(tmp_path, monkeypatch):
    import builder.render as r

    v = expand(load_target("cpu"))[0]
    out = tmp_path / "out" / "cpu"
    render(v, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    real = Path.write_text
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # fail in the middle of writing
            boom()
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", flaky)
    with pytest.raises(OSError, match="disk full"):
        r.render(v, out)
    monkeypatch.setattr(Path, "write_text", real)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path / "out")) == ["cpu"]
    # and a first render that fails leaves no directory at all
    monkeypatch.setattr(Path, "write_text", flaky)
    calls["n"] = 0
    with pytest.raises(OSError):
        r.render(v, tmp_path / "fresh" / "cpu")
    assert os.listdir(tmp_path / "fresh") == []


def test_strict_undefined_fails_instead_of_writing_blanks(tmp_path, monkeypatch):
    import builder.render as r

    tpl = tmp_path / "tpl"
    tpl.mkdir()
    for name in r.TEMPLATES:
        (tpl / name).write_text((REPO / "compose" / name).read_text())
    (tpl / "nginx.conf.j2").write_text("{{ header }}\nlisten {{ no_such_value }};\n")
    monkeypatch.setattr(r, "environment", lambda root=None, _e=r.environment: _e(str(tpl)))
    v = expand(load_target("cpu"))[0]
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        r.render(v, tmp_path / "out" / "cpu")
    assert not (tmp_path / "out" / "cpu").exists()


# ---- compose.yaml ------------------------------------------------------------------------------


def test_vllm_service_carries_the_variant_command_env_and_is_not_published():
    for v in variants():
        vllm = compose_of(render_texts(v))["services"]["vllm"]
        assert vllm["command"] == v.command
        assert vllm["entrypoint"] == []
        assert vllm["environment"] == v.container_env
        assert "ports" not in vllm
        assert vllm["restart"] == "unless-stopped"
        test = vllm["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python3"] and "urllib" in test[-1] and "http://127.0.0.1:8000/health" in test[-1]


def test_gpu_reservations_follow_the_variant_devices():
    for v in variants():
        vllm = compose_of(render_texts(v))["services"]["vllm"]
        if v.spec.platform.accelerator == "cpu":
            assert "deploy" not in vllm
            continue
        [dev] = vllm["deploy"]["resources"]["reservations"]["devices"]
        assert dev == {"driver": "nvidia", "device_ids": v.devices, "capabilities": ["gpu"]}
        assert v.container_env["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(len(v.devices)))


def test_shm_default_is_1g_and_16g_with_tensor_parallel(tmp_path):
    v = cpu_with(tmp_path, {"limits": {"shm_size": None}})
    assert v.spec.limits.shm_size is None
    assert compose_of(render_texts(v))["services"]["vllm"]["shm_size"] == "1g"
    tp2 = [v for v in variants() if v.name == "tp2-a40"][0]
    assert compose_of(render_texts(tp2))["services"]["vllm"]["shm_size"] == "16g"


def test_memory_and_swap_limits(tmp_path):
    v = cpu_with(tmp_path, {"limits": {"memory": "6g", "swap": "512m"}})
    vllm = compose_of(render_texts(v))["services"]["vllm"]
    assert (vllm["mem_limit"], vllm["memswap_limit"]) == ("6g", "6656m")
    v = cpu_with(tmp_path, {"limits": {"memory": "6g", "swap": 0}}, name="cpu-noswap")
    vllm = compose_of(render_texts(v))["services"]["vllm"]
    assert vllm["mem_limit"] == vllm["memswap_limit"] == "6g"
    v = cpu_with(tmp_path, {"limits": {"memory": None}}, name="cpu-nolimit")
    vllm = compose_of(render_texts(v))["services"]["vllm"]
    assert "mem_limit" not in vllm and "memswap_limit" not in vllm


def test_hf_cache_mounted_read_only_only_for_downloaded_models():
    for v in variants():
        vols = compose_of(render_texts(v))["services"]["vllm"]["volumes"]
        hf = [m for m in vols if m["target"] == "/models/hf"]
        cache = [m for m in vols if m["type"] == "volume"]
        assert [m["source"] for m in cache] == ["vllm-cache"]
        if v.spec.model.generate:
            assert hf == []
        else:
            assert hf == [{"type": "bind", "source": "${HF_CACHE:-~/.cache/huggingface}", "target": "/models/hf", "read_only": True}]


def test_gateway_publishes_on_the_bind_address_and_mounts_keys_at_run_time():
    v = expand(load_target("cpu"))[0]
    files = render_texts(v)
    gw = compose_of(files)["services"]["gateway"]
    assert gw["ports"] == ["${IMGFORGE_BIND:-127.0.0.1}:${IMGFORGE_API_PORT:-8080}:8080"]
    mounts = {m["target"]: m for m in gw["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"]["read_only"] and mounts["/etc/nginx/nginx.conf"]["source"] == "./nginx.conf"
    keys = mounts["/etc/nginx/api_keys.map"]
    assert keys["read_only"] and keys["source"].startswith("${IMGFORGE_API_KEYS_FILE")
    assert "sk-" not in files["compose.yaml"].replace('"sk-..." 1;', "")


def test_webui_env_defaults_then_target_webui_env(tmp_path):
    v = cpu_with(tmp_path, {"webui_env": {"RAG_EMBEDDING_ENGINE": "ollama", "EXTRA_SETTING": "x"}})
    webui = compose_of(render_texts(v))["services"]["webui"]
    env = webui["environment"]
    assert env["OPENAI_API_BASE_URL"] == "http://vllm:8000/v1"
    assert env["ENABLE_OLLAMA_API"] == "False" and env["OFFLINE_MODE"] == "True" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAG_EMBEDDING_ENGINE"] == "ollama"  # the target's value wins
    assert env["EXTRA_SETTING"] == "x"
    assert env["WEBUI_SECRET_KEY"].startswith("${WEBUI_SECRET_KEY:?")  # no default secret
    assert webui["ports"] == ["${IMGFORGE_BIND:-127.0.0.1}:${IMGFORGE_WEBUI_PORT:-3000}:8080"]
    assert webui["depends_on"] == {"vllm": {"condition": "service_started"}}
    assert [m["source"] for m in webui["volumes"]] == ["webui-data"]
    assert env["DATA_DIR"] == webui["volumes"][0]["target"]


def test_no_webui_when_software_webui_is_null(tmp_path):
    v = cpu_with(tmp_path, {}, webui=None)
    assert v.spec.software.webui is None
    files = render_texts(v)
    compose = compose_of(files)
    assert sorted(compose["services"]) == ["gateway", "vllm"]
    assert "webui-data" not in compose["volumes"]
    assert "WEBUI_SECRET_KEY" not in files[".env.example"]


def test_dollar_signs_are_escaped_for_compose(tmp_path):
    v = cpu_with(tmp_path, {"env": {"SOME_SETTING": "a$b"}})
    assert 'SOME_SETTING: "a$$b"' in render_texts(v)["compose.yaml"]


# ---- nginx.conf -------------------------------------------------------------------------------------


def _location(conf: str, head: str) -> str:
    start = conf.index(head)
    depth, i = 0, conf.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        if depth == 0:
            return conf[start:i + 1]
        i += 1


@pytest.mark.parametrize("mode", ["key", "open", "off"])
def test_metrics_modes(tmp_path, mode):
    v = cpu_with(tmp_path, {"gateway": {"metrics": mode}}, name=f"cpu-{mode}")
    loc = _location(render_texts(v)["nginx.conf"], "location = /metrics")
    assert ("proxy_pass" in loc) == (mode != "off")
    assert ("return 403" in loc) == (mode == "key")
    assert ("return 404" in loc) == (mode == "off")


def test_gateway_settings_come_from_the_target(tmp_path):
    v = cpu_with(tmp_path, {"gateway": {"rate_per_second": 3, "burst": 7, "timeout_s": 42}})
    conf = render_texts(v)["nginx.conf"]
    assert "rate=3r/s;" in conf and "burst=7 nodelay;" in conf
    assert "proxy_read_timeout 42s;" in conf and "proxy_send_timeout 42s;" in conf


def test_nginx_runs_unprivileged_and_resolves_vllm_at_request_time():
    v = expand(load_target("cpu"))[0]
    conf = render_texts(v)["nginx.conf"]
    assert "pid /tmp/nginx.pid;" in conf and "listen 8080;" in conf
    assert re.search(r"^\s*user\s", conf, re.M) is None
    assert "resolver 127.0.0.11 valid=10s" in conf
    assert re.findall(r"proxy_pass ([^;]+);", conf) and set(re.findall(r"proxy_pass ([^;]+);", conf)) == {"$vllm"}
    for code in ("429", "502", "504"):
        assert re.search(rf"error_page {code} @\w+;", conf), code


# ---- .env.example, systemd unit, README ------------------------------------------------------------------


def test_env_example_names_every_variable_compose_reads():
    for v in variants():
        files = render_texts(v)
        used = set(re.findall(r"\$\{([A-Z_]+)[:}]", files["compose.yaml"]))
        defined = set(re.findall(r"^([A-Z_]+)=", files[".env.example"], re.M))
        assert used == defined, v.name
        assert re.search(r"^WEBUI_SECRET_KEY=$", files[".env.example"], re.M) or not v.spec.software.webui
        assert "openssl rand" in files[".env.example"]


def test_systemd_unit_runs_compose_at_boot():
    v = [v for v in variants() if v.name == "dgx-spark"][0]
    unit = render_texts(v)["imgforge-dgx-spark.service"]
    assert re.search(r"^After=.*docker\.service.*network-online\.target", unit, re.M)
    assert re.search(r"^Requires=docker\.service$", unit, re.M)
    assert re.search(r"^Restart=always$", unit, re.M)
    assert re.search(r"^WorkingDirectory=/opt/imgforge/dgx-spark$", unit, re.M)
    assert re.search(r"^ExecStart=/usr/bin/docker compose --project-name imgforge-dgx-spark .* up ", unit, re.M)
    assert re.search(r"^WantedBy=multi-user\.target$", unit, re.M)
    assert yaml.safe_load(render_texts(v)["compose.yaml"])["name"] == "imgforge-dgx-spark"


def test_readme_names_the_lacking_flags():
    v = [v for v in variants() if v.name == "rtx4090-cu124-headless"][0]
    readme = render_texts(v)["README.md"]
    assert v.replaced
    for r in v.replaced:
        assert r.describe(v.spec.software.vllm) in readme


# ---- CLI and levels -------------------------------------------------------------------------------------


def test_cli_render_writes_one_dir_per_variant_and_records_rendered(tmp_path):
    from builder.cli import cli

    res = CliRunner().invoke(cli, ["render", "--target", "rtx4090", "-o", str(tmp_path / "o"), "--json", "--unlocked"])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.output)
    assert [d["variant"] for d in data] == [v.name for v in expand(load_target("rtx4090"))]
    for d in data:
        assert all(Path(p).is_file() for p in d["files"])
        assert levels.highest(d["variant"])[0] == "rendered"


def test_levels_order_and_persistence(tmp_path):
    assert levels.highest("x") is None
    levels.record("x", "linted")
    levels.record("x", "rendered")  # a later, lower level does not hide a higher one
    level, when = levels.highest("x")
    assert level == "linted" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", when)
    levels.record("x", "built", {"digest": "sha256:0"})
    assert levels.highest("x")[0] == "built"
    assert levels.reached("x")["built"]["details"] == {"digest": "sha256:0"}
    assert levels.highest("y") is None
    with pytest.raises(ValueError, match="unknown verification level"):
        levels.record("x", "deployed")
    assert list(levels.LEVELS) == ["rendered", "linted", "locked", "built", "booted", "served", "reproducible"]


def test_a_locked_render_adds_the_dockerfiles_with_headers(tmp_path):
    from builder.cmd_render import current_lock
    from builder.lock import lock_hash

    v = expand(load_target("cpu"))[0]
    lock = current_lock(v)
    if lock is None:
        pytest.skip("no current lock for cpu (targets/cpu.lock.json): imgforge lock --target cpu")
    paths = render(v, tmp_path / "cpu", lock=lock)
    dockerfiles = [p for p in paths if p.name.startswith("Dockerfile")]
    assert dockerfiles
    for p in paths:
        first, second = p.read_text().splitlines()[:2]
        assert f"lock {lock_hash(lock)}" in first, p.name
        assert not second.startswith("# imgforge"), p.name  # one header, not two
    compose = yaml.safe_load((tmp_path / "cpu" / "compose.yaml").read_text())
    assert compose["services"]["vllm"]["image"] == f"imgforge/cpu-vllm:{lock_hash(lock)}"
    readme = (tmp_path / "cpu" / "README.md").read_text()
    assert all(p.name in readme for p in dockerfiles)
    for p in dockerfiles:  # no registry image: every FROM is a local stage or scratch
        for line in p.read_text().splitlines():
            if line.startswith("FROM "):
                assert line.split()[1] == "scratch" or line.split()[1].startswith("localhost/"), line
