"""One exception root for the whole product.

Leaves also inherit the built-in they resemble (as gpiozero does), so callers that
only know ``ValueError`` or ``OSError`` still catch them. The CLI maps
:class:`UsageError` to exit code 2 and everything else to 1.
"""

from __future__ import annotations


class EdgeRecorderError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(EdgeRecorderError):
    """Bad usage, configuration or input: the user can fix it (exit code 2)."""


class ConfigError(UsageError, ValueError):
    """The configuration is invalid; ``problems`` holds one line per error, each with its path."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} error(s)\n{lines}")


class SensorError(EdgeRecorderError, OSError):
    """A sensor could not be reached or identified."""


class SensorNotFound(SensorError):
    """Nothing (or the wrong chip) answered at the configured bus and address."""


class SessionFileError(EdgeRecorderError, ValueError):
    """A session file is unreadable or not an edge-recorder session."""


class StoreFull(EdgeRecorderError):
    """The device store has no room for a new session without dropping an unpublished one."""
