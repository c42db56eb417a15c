"""Label rules: limits, merging, the allowed set, and the high-cardinality warning.

Labels categorise sessions ("login", "bench-test"). Values that identify a user, a day
or a unit (dates, UUIDs, e-mail addresses, long numbers) belong elsewhere: they make
every session its own category. Such labels are accepted, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_LABELS = 16
MAX_LABEL_CHARS = 64

_HIGH_CARDINALITY = (
    (re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{2,4}|\b\d{8}T?\d{0,6}\b"), "a date"),
    (re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                r"[0-9a-fA-F]{12}"), "a UUID"),
    (re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}"), "an e-mail address"),
    (re.compile(r"\d{6,}"), "a long number"),
)


def label_problem(label: str) -> str | None:
    """Why ``label`` is not a valid label, or None."""
    if not 1 <= len(label) <= MAX_LABEL_CHARS:
        return f"label {label[:80]!r} must be 1-{MAX_LABEL_CHARS} characters"
    if not label.isprintable():
        return f"label {label!r} holds a control character"
    return None


def merge_labels(*groups: Iterable[str]) -> tuple[str, ...]:
    """Concatenate label groups, dropping repeats, keeping first-seen order."""
    return tuple(dict.fromkeys(label for group in groups for label in group))


def check_labels(labels: tuple[str, ...], allowed: tuple[str, ...] | None) -> str | None:
    """Why this merged label set is not acceptable, or None."""
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels given; at most {MAX_LABELS} are allowed"
    for label in labels:
        problem = label_problem(label)
        if problem:
            return problem
    if allowed is not None:
        bad = [x for x in labels if x not in allowed]
        if bad:
            return (f"label(s) {', '.join(map(repr, bad))} not allowed; allowed labels are: "
                    f"{', '.join(allowed)}")
    return None


def cardinality_warning(label: str) -> str | None:
    """A warning if ``label`` looks like a high-cardinality value, else None."""
    for pattern, what in _HIGH_CARDINALITY:
        if pattern.search(label):
            return (f"label {label!r} looks like {what}; labels should categorise sessions, "
                    "not identify users, days or units (put that in journey_id)")
    return None
