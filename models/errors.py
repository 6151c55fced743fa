"""The few errors promptroute raises on purpose, translated at the edges (CLI, HTTP).

PromptrouteError
├── DataError       a labelled-log line is unusable (file, line, reason)
├── ConfigError     the catalog or config is invalid (field, reason)
├── ArtifactError   a trained artifact is missing, tampered with or incompatible
│   ├── OldArtifactFormatError    saved in a format this promptroute no longer reads (retrain)
│   ├── ArtifactSignatureError    unsigned or mis-signed while an artifact key is configured
│   └── ArtifactLocationError     named outside the artifacts directory it may be loaded from
└── UnknownModelError  a model name the catalog or artifact does not know
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ArtifactLocationError",
    "ArtifactSignatureError",
    "ConfigError",
    "DataError",
    "OldArtifactFormatError",
    "PromptrouteError",
    "UnknownModelError",
]


class PromptrouteError(Exception):
    """Base class: anything the user can fix, with a message that says how."""


class DataError(PromptrouteError):
    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class ConfigError(PromptrouteError):
    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {reason}")
        self.field = field
        self.reason = reason
        self.source = source


class ArtifactError(PromptrouteError):
    pass


class OldArtifactFormatError(ArtifactError):
    def __init__(self, path: str, format_version: object, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.format_version = format_version


class ArtifactSignatureError(ArtifactError):
    pass


class ArtifactLocationError(ArtifactError):
    def __init__(self, value: str, artifacts_dir: str, message: str) -> None:
        super().__init__(message)
        self.value = value
        self.artifacts_dir = artifacts_dir


class UnknownModelError(PromptrouteError):
    def __init__(self, name: str, known: list[str] | tuple[str, ...], *, field: str = "model"):
        shown = ", ".join(sorted(known)[:20]) + (" …" if len(known) > 20 else "")
        super().__init__(f"{field}: unknown model {name!r}; known: {shown}")
        self.name = name
        self.field = field
