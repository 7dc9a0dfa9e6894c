"""verify: boot a variant's stack under testcontainers, run every check, report, tear down.

The stack runs as its own Compose project (``imgforge-<variant>-verify``) on free
loopback ports with keys of its own, so it never touches a stack started by
``imgforge up``. Clean-up is explicit (testcontainers' reaper cannot run here):
in ``finally``, and SIGTERM is turned into the same path as Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .checks_http import CheckResult, all_checks, run_checks, table
from .paths import state_dir
from .stack import Stack, StackError, free_port, ready_timeout


@dataclass
class Report:
    variant: str
    started: str
    level: str | None = None
    boot_s: float | None = None
    first_completion_s: float | None = None
    results: list[CheckResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "started": self.started, "passed": self.passed, "level": self.level,
                "boot_s": self.boot_s, "first_completion_s": self.first_completion_s, "error": self.error,
                "checks": [r.to_dict() for r in self.results]}

    def text(self) -> str:
        head = f"{self.variant}: {'PASSED' if self.passed else 'FAILED'}"
        if self.first_completion_s is not None:
            head += f" (first completion {self.first_completion_s:.1f} s after start)"
        out = [head]
        if self.results:
            out.append(table(self.results))
        if self.error:
            out.append(f"error: {self.error}")
        return "\n".join(out)


class _Terminated(BaseException):
    pass


def _on_term(signum, frame):
    raise _Terminated(f"signal {signum}")


def record_level(variant: str, level: str, details: dict[str, Any]) -> str | None:
    try:
        from .levels import record
    except ImportError:
        return "builder.levels is absent: level not recorded"
    record(variant, level, details)
    return None


def verify(variant, *, echo: Callable[[str], None] = lambda s: None, checks=None, ready_s: float | None = None,
           keep_on_failure: bool = False) -> Report:
    """Boot, check, tear down. Never leaves containers behind (unless keep_on_failure)."""
    from testcontainers.compose import DockerCompose

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    rep = Report(variant.name, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    st = Stack(variant, name=f"{variant.name}-verify", root=state_dir() / "stacks" / f"{variant.name}-verify",
               bind="127.0.0.1", api_port=free_port(), webui_port=free_port(), echo=echo)
    st.write()
    st.ensure_images()
    compose = DockerCompose(context=str(st.dir), compose_file_name="compose.yaml", env_file=str(st.env_file),
                            pull=False, build=False, wait=False)
    old_term = signal.signal(signal.SIGTERM, _on_term)
    booted = False
    try:
        st.check_ports()
        t0 = time.monotonic()
        echo(f"booting {st.project} under testcontainers")
        try:
            compose.start()
        except Exception as exc:
            err = getattr(exc, "stderr", None) or str(exc)
            raise StackError(f"docker compose up failed: {str(err).strip()[-1500:]}") from None
        rep.boot_s = round(time.monotonic() - t0, 1)
        urls = st.urls()
        st.wait_serving(urls, ready_s if ready_s is not None else ready_timeout(variant))
        rep.first_completion_s = round(time.monotonic() - t0, 1)
        booted = True
        echo(f"serving after {rep.first_completion_s:.1f} s; running checks")
        ep = st.endpoints(urls)
        rep.results = run_checks(checks if checks is not None else all_checks(), ep,
                                 log=lambda r: echo(f"  {'ok  ' if r.passed else 'FAIL'} {r.name}: {r.observed} ({r.seconds:.2f} s)"))
    except StackError as exc:
        rep.error = str(exc)
    except (KeyboardInterrupt, _Terminated) as exc:
        rep.error = f"interrupted ({exc or 'Ctrl-C'})"
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if not (keep_on_failure and not rep.passed):
            echo(f"tearing down {st.project}")
            try:
                compose.stop(down=True)
            except Exception:
                pass
            st.down(volumes=True, quiet=True)
        if booted:
            rep.level = "served" if rep.passed else "booted"
            note = record_level(variant.name, rep.level, {"checks": len(rep.results),
                                                          "failed": [r.name for r in rep.results if not r.passed]})
            if note:
                echo(note)
    return rep


def write_report(rep: Report, path: Path | None) -> Path:
    path = path or state_dir() / "reports" / f"{rep.variant}-verify.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep.to_dict(), indent=1) + "\n", encoding="utf-8")
    path.with_suffix(".txt").write_text(rep.text() + "\n", encoding="utf-8")
    return path
