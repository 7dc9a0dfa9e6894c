"""Typed errors. Every user-facing error is one line; the CLI maps them to exit codes."""

from __future__ import annotations


class ImgforgeError(Exception):
    """An error the user can act on; printed as one line."""

    exit_code = 1


class ConfigError(ImgforgeError):
    """Bad input: names the file, the key, the value and what is allowed. Exit 2."""

    exit_code = 2

    def __init__(self, file: str, key: str, value: object, message: str, allowed: str | None = None):
        self.file, self.key, self.value, self.message, self.allowed = file, key, value, message, allowed
        text = f"{file}: {key or '<top>'}: {value!r}: {message}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(" ".join(text.split()))


class UsageError(ImgforgeError):
    """Bad command-line input or a refused operation. Exit 2."""

    exit_code = 2
