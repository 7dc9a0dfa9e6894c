"""The imgforge command line. One verb per pipeline stage.

Subcommands are imported only when invoked, so `imgforge --help` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from . import __version__
from .errors import ImgforgeError

# verb -> (module, one-line help). Each module defines a click command named `cmd`.
VERBS: dict[str, tuple[str, str]] = {
    "targets": ("builder.cmd_targets", "List targets, their variants and the verification level each reached here."),
    "show": ("builder.cmd_show", "Show a target's resolved variants, including the exact vLLM command line."),
    "schema": ("builder.cmd_schema", "Print the target file JSON Schema (for editors)."),
    "render": ("builder.cmd_render", "Render Dockerfiles, compose.yaml, nginx.conf, .env.example and a systemd unit."),
    "lint": ("builder.cmd_lint", "Check a rendered stack: docker compose config, nginx -t, vLLM flags."),
    "plan": ("builder.cmd_plan", "Preflight: will the model and its KV cache fit the GPUs?"),
    "probe": ("builder.cmd_probe", "Read this host's GPUs and topology and suggest a target and flags."),
    "lock": ("builder.cmd_lock", "Pin every wheel and Debian package of a target with sha256."),
    "fetch": ("builder.cmd_fetch", "Download what the cache lacks and verify every byte."),
    "build": ("builder.cmd_build", "Build a target's images from the cache, offline and reproducibly."),
    "inspect": ("builder.cmd_inspect", "Static checks of built images: ELF architecture, packages, CUDA, vLLM's parser."),
    "up": ("builder.cmd_up", "Build what is missing, start the stack and print where to chat."),
    "down": ("builder.cmd_down", "Stop a stack (keeps Open WebUI's data unless --volumes)."),
    "verify": ("builder.cmd_verify", "Boot a stack and check it serves; or --reproducible: rebuild and compare digests."),
    "publish": ("builder.cmd_publish", "Push a target's images to a registry with annotations and SBOM."),
    "sbom": ("builder.cmd_sbom", "Print a target's SBOM generated from its lock."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [v for v, (mod, _) in VERBS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, _ = VERBS[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None
            raise
        return mod.cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(v, VERBS[v][1]) for v in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgforge")
def cli() -> None:
    """imgforge: reproducible vLLM + Open WebUI + nginx stacks from target files.

    --target takes a bundled target name (see `imgforge targets`) or a path to a
    target file; it defaults to `cpu`, which runs on any x86_64 machine with Docker.
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="imgforge", standalone_mode=False)
    except ImgforgeError as exc:
        click.echo(f"imgforge: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("imgforge: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
