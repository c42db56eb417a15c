"""What triggers ask of the recorder. The recorder knows no trigger, only these events.

Each event may carry a ``reply`` callback: the recorder calls it exactly once with a
:class:`~edge_recorder.documents.CommandReply` (``{"ok": true, ...}`` or ``{"ok": false,
"error": {"code", "message"}}`` on the wire).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_recorder.documents import CommandReply

if TYPE_CHECKING:
    from edge_recorder.config import SessionConfig

Reply = CommandReply
ReplyFn = Callable[[Reply], None]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""A field the trigger did not give: the configured default applies."""


@dataclass(frozen=True)
class Trigger:
    source: str  # mqtt | gpio | interval
    detail: str = ""


@dataclass(frozen=True)
class StartRequested:
    trigger: Trigger
    labels: tuple[str, ...] = ()
    journey_id: Any = UNSET  # str, None (no journey) or UNSET (the current journey)
    duration_s: Any = UNSET  # float, None (until stopped) or UNSET (session.duration_s)
    pre_trigger_s: float | None = None  # None = session.pre_trigger_s
    at_ns: int | None = None  # when the trigger fired (monotonic clock); None = when handled
    reply: ReplyFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StopRequested:
    trigger: Trigger
    session_id: str | None = None  # None = every open session
    reason: str = "command"  # stop_reason: command | button
    at_ns: int | None = None  # monotonic clock; None = when handled
    reply: ReplyFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StatusRequested:
    reply: ReplyFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class JourneyRequested:
    """Set the journey later sessions get: a string, None (no journey), or a new auto one."""

    journey_id: Any = UNSET  # str | None; UNSET with ``new_auto``
    new_auto: bool = False
    reply: ReplyFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ResendRequested:
    """A collector asks for parts of a published session again (None: all of it)."""

    session_id: str
    parts: list[int] | None = None
    reply: ReplyFn | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SettingsChanged:
    """A reload changed ``session`` (and with it, maybe, the journey): applied by the recorder
    in its own thread, between two events, like everything else it is asked."""

    settings: SessionConfig
    journey_id: Any = UNSET  # str | None: the new journey; UNSET: keep the current one
    new_auto_journey: bool = False  # a fresh auto journey (journey_id: auto in the new file)
    reply: ReplyFn | None = field(default=None, compare=False)


Event = StartRequested | StopRequested | StatusRequested | JourneyRequested | ResendRequested \
    | SettingsChanged


class Rejected(Exception):
    """A request the recorder refuses; ``code`` is one of the documented error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def ok(**fields: Any) -> Reply:
    return CommandReply(ok=True, **fields)


def error(code: str, message: str) -> Reply:
    return CommandReply.failure(code, message)
