"""Errors shown to the user as one message, without a traceback."""

from __future__ import annotations


class VitolaunchError(Exception):
    """Base of every user-facing error: the CLI prints str(error) and exits non-zero."""


class ResourceError(VitolaunchError):
    """Resources the scheduler cannot provide. `key` is the spec key at fault (e.g. "resources.nodes"), so a
    caller holding the spec can point at its line (vitolaunch.launch.resource_check)."""

    def __init__(self, message: str, *, key: str, hint: str | None = None) -> None:
        super().__init__(f"{message}. {hint}" if hint else message)
        self.message, self.key, self.hint = message, key, hint


class SpecError(VitolaunchError):
    """A problem in a sweep spec, a base config or a `-o` override, located as precisely as known.

    Renders as e.g. `sweeps/x.yaml:12: key 'loss.temprature': unknown key. Did you mean 'loss.temperature'?`
    Parts that are None are left out; an override replaces the line: `sweeps/x.yaml (-o nodes=2): ...`.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
        override: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        self.hint = hint
        self.override = override  # the `key=value` text of the -o option that caused it, if any

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        if self.override is not None:
            where = f"{where} (-o {self.override})" if where else f"-o {self.override}"
        parts = [where] if where else []
        if self.key:
            parts.append(f"key '{self.key}'")
        text = ": ".join(parts + [_sentence(self.message)])
        return f"{text} {_sentence(self.hint)}" if self.hint else text


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else f"{text}."
