"""A bounded ring of timestamped samples per sensor, shared by every open session.

Samples arrive in blocks (one FIFO drain each) and get consecutive sequence numbers.
Sessions are windows over the ring: each keeps a cursor (the next sequence number it
wants) and copies blocks out as they arrive, so overlapping sessions contain the very
same samples. The oldest blocks are evicted when the ring holds more than its capacity;
a cursor that falls behind the eviction learns exactly how many samples it missed.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import deque
from dataclasses import dataclass

from edge_recorder.sensors.base import FrameLayout


class Block:
    """Consecutive samples: ``t_ns[i]`` and ``columns[c][i]`` are sequence ``first_seq + i``.

    A block from the sampler holds the frames as the driver read them (``raw``, in
    ``layout``) and decodes them the first time :attr:`columns` is asked for: samples no
    session wants are never decoded, and a session decodes a whole pump's worth at once.
    A block can also be built from decoded columns (``layout`` None). Shared by the ring
    and every session reading it: never modified once appended.
    """

    __slots__ = ("first_seq", "t_ns", "raw", "layout", "_columns")

    def __init__(self, first_seq: int, t_ns: array[int],
                 columns: tuple[array[float], ...] | None = None, *,
                 raw: bytes = b"", layout: FrameLayout | None = None) -> None:
        if columns is None and layout is None:
            raise ValueError("a block needs its columns or its raw frames and their layout")
        self.first_seq = first_seq
        self.t_ns = t_ns  # int64, ns on the monotonic clock (the file maps them to the wall)
        self.raw = raw
        self.layout = layout
        self._columns = columns  # float32: 4 bytes a value, not a 32-byte Python float

    @property
    def columns(self) -> tuple[array[float], ...]:
        """One float32 column per channel (:data:`~edge_recorder.sensors.base.CHANNELS`
        order), in SI units; decoded from ``raw`` on first use."""
        if self._columns is None:
            assert self.layout is not None
            self._columns = self.layout.decode(self.raw)
        return self._columns

    def __len__(self) -> int:
        return len(self.t_ns)

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.t_ns)

    @staticmethod
    def join(blocks: list[Block]) -> Block:
        """Consecutive blocks as one (one message in the file instead of several); frames
        of one layout stay undecoded, so the joined block decodes them in one go."""
        if len(blocks) == 1:
            return blocks[0]
        t_ns: array[int] = array("q")
        for b in blocks:
            t_ns += b.t_ns
        layout = blocks[0].layout
        if layout is not None and all(b.layout is layout or b.layout == layout
                                      for b in blocks):
            return Block(blocks[0].first_seq, t_ns, raw=b"".join(b.raw for b in blocks),
                         layout=layout)
        columns: tuple[array[float], ...] = tuple(array("f") for _ in blocks[0].columns)
        for b in blocks:
            for joined, column in zip(columns, b.columns, strict=True):
                joined += column
        return Block(blocks[0].first_seq, t_ns, columns)

    def slice(self, start_seq: int, start_ns: int | None = None,
              stop_before_ns: int | None = None) -> Block:
        """The samples from ``start_seq`` on, within ``[start_ns, stop_before_ns)`` if given."""
        lo = max(0, start_seq - self.first_seq)
        hi = len(self.t_ns)
        if start_ns is not None and lo < hi and self.t_ns[lo] < start_ns:
            lo = bisect.bisect_left(self.t_ns, start_ns, lo, hi)
        if stop_before_ns is not None:
            hi = max(lo, bisect.bisect_left(self.t_ns, stop_before_ns, lo, hi))
        if lo == 0 and hi == len(self.t_ns):
            return self
        if self.layout is not None:
            size = self.layout.frame_bytes
            return Block(self.first_seq + lo, self.t_ns[lo:hi],
                         raw=self.raw[lo * size:hi * size], layout=self.layout)
        return Block(self.first_seq + lo, self.t_ns[lo:hi], tuple(c[lo:hi] for c in self.columns))


@dataclass(frozen=True)
class Gap:
    """An interval without data: ``lost`` samples between ``start_ns`` and ``end_ns``."""

    start_ns: int
    end_ns: int
    lost: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"start_ns": self.start_ns, "end_ns": self.end_ns, "lost": self.lost,
                "reason": self.reason}


class SampleRing:
    """Thread-safe: the sampler appends, the recorder reads."""

    def __init__(self, capacity_samples: int, max_gaps: int = 1000) -> None:
        if capacity_samples < 1:
            raise ValueError("capacity_samples must be at least 1")
        self.capacity_samples = capacity_samples
        self._blocks: deque[Block] = deque()
        self._held = 0
        self._next_seq = 0
        self._gaps: deque[Gap] = deque(maxlen=max_gaps)
        self._lock = threading.Lock()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def oldest_seq(self) -> int:
        with self._lock:
            return self._blocks[0].first_seq if self._blocks else self._next_seq

    def newest_t_ns(self) -> int | None:
        with self._lock:
            return self._blocks[-1].t_ns[-1] if self._blocks else None

    def append(self, t_ns: array[int], raw: bytes, layout: FrameLayout) -> None:
        """Add one read's samples: int64 times and the frames as read (14–16 bytes a
        sample), so a minute of two 1 kHz sensors takes under 3 MB."""
        if not t_ns:
            return
        block = Block(0, t_ns, raw=raw, layout=layout)
        with self._lock:
            block.first_seq = self._next_seq
            self._blocks.append(block)
            self._next_seq += len(t_ns)
            self._held += len(t_ns)
            while self._held - len(self._blocks[0]) >= self.capacity_samples:
                self._held -= len(self._blocks.popleft())

    def add_gap(self, gap: Gap) -> None:
        with self._lock:
            self._gaps.append(gap)

    def gaps_between(self, start_ns: int, end_ns: int) -> list[Gap]:
        """Gaps overlapping ``[start_ns, end_ns)``."""
        with self._lock:
            return [g for g in self._gaps if g.end_ns > start_ns and g.start_ns < end_ns]

    def read(self, from_seq: int, start_ns: int | None = None,
             stop_before_ns: int | None = None) -> tuple[list[Block], int]:
        """Blocks holding sequence ``from_seq`` onwards (samples in ``[start_ns,
        stop_before_ns)`` only), and how many samples before them were evicted unread
        (a reader that fell behind). A sample is read after it was taken, so a window
        opened now may still receive samples older than its start: ``start_ns`` drops them."""
        with self._lock:
            if not self._blocks:
                return [], max(0, self._next_seq - from_seq)
            oldest = self._blocks[0].first_seq
            start = max(from_seq, oldest)
            picked: list[Block] = []
            for block in reversed(self._blocks):  # readers are usually near the newest end
                if block.end_seq <= start:
                    break
                picked.append(block)
        missed = max(0, oldest - from_seq)
        out = []
        for block in reversed(picked):
            part = block.slice(start, start_ns, stop_before_ns)
            if len(part):
                out.append(part)
            elif part.first_seq >= block.end_seq:
                continue  # the whole block is before start_ns
            if part.end_seq < block.end_seq:
                break  # reached stop_before_ns
        return out, missed

    def seq_at(self, t_ns: int) -> int:
        """Sequence number of the first sample at or after ``t_ns`` (for pre-trigger windows)."""
        with self._lock:
            blocks = list(self._blocks)
            next_seq = self._next_seq
        for block in reversed(blocks):
            if block.t_ns[0] < t_ns:
                i = bisect.bisect_left(block.t_ns, t_ns)
                return block.first_seq + i
        return blocks[0].first_seq if blocks else next_seq
