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
from typing import Any

from edge_recorder.documents import Gap
from edge_recorder.sensors.base import FrameLayout, numpy_in_use

Segment = tuple[int, int, int]
"""``(t0_ns, step_ns, n)``: ``n`` evenly spaced instants ``t0_ns + i·step_ns``."""


class Block:
    """Consecutive samples: ``t_ns[i]`` and ``columns[c][i]`` are sequence ``first_seq + i``.

    A block from the sampler holds what one read gave: the frames as the driver read them
    (``raw``, in ``layout``) and their instants as one evenly spaced :data:`Segment`.
    Nothing is unpacked per sample until it is wanted: :attr:`columns` decodes the frames
    and :attr:`t_ns` lists the instants on first use, so samples no session wants are
    never touched, and a session writes a whole flush's worth in one go. Blocks joined
    keep both forms (bytes joined, segments listed). A block can also be built from
    decoded columns and explicit times. Shared by the ring and every session reading it:
    never modified once appended.
    """

    __slots__ = ("first_seq", "raw", "layout", "segments", "_n", "_t_ns", "_columns")

    def __init__(self, first_seq: int, t_ns: array[int] | None = None,
                 columns: tuple[array[float], ...] | None = None, *,
                 raw: bytes = b"", layout: FrameLayout | None = None,
                 segments: tuple[Segment, ...] | None = None) -> None:
        if columns is None and layout is None:
            raise ValueError("a block needs its columns or its raw frames and their layout")
        if (t_ns is None) == (segments is None):
            raise ValueError("a block needs its times: t_ns or segments, not both")
        self.first_seq = first_seq
        self.raw = raw
        self.layout = layout
        self.segments = segments
        self._n = len(t_ns) if t_ns is not None else sum(n for _, _, n in segments or ())
        self._t_ns = t_ns  # int64, ns on the monotonic clock (the file maps them to the wall)
        self._columns = columns  # float32: 4 bytes a value, not a 32-byte Python float

    @classmethod
    def read(cls, t0_ns: int, step_ns: int, frames: int, raw: bytes,
             layout: FrameLayout) -> Block:
        """One read's block (sequence numbers assigned by the ring), built without checks:
        this runs on every poll."""
        block = cls.__new__(cls)
        block.first_seq = 0
        block.raw = raw
        block.layout = layout
        block.segments = ((t0_ns, step_ns, frames),)
        block._n = frames
        block._t_ns = None
        block._columns = None
        return block

    @property
    def columns(self) -> tuple[array[float], ...]:
        """One float32 column per channel (:data:`~edge_recorder.sensors.base.CHANNELS`
        order), in SI units; decoded from ``raw`` on first use."""
        if self._columns is None:
            assert self.layout is not None
            self._columns = self.layout.decode(self.raw)
        return self._columns

    @property
    def t_ns(self) -> array[int]:
        """Every sample's instant (int64 ns, monotonic clock); listed on first use."""
        if self._t_ns is None:
            self._t_ns = self.times(0)
        return self._t_ns

    def times(self, offset_ns: int) -> array[int]:
        """Every sample's instant plus ``offset_ns`` (the file's wall-clock mapping)."""
        if self.segments is None or self._t_ns is not None and not offset_ns:
            t = self.t_ns
            return array("q", [v + offset_ns for v in t]) if offset_ns else t
        return segment_times(self.segments, offset_ns)

    @property
    def first_t_ns(self) -> int:
        return self.segments[0][0] if self.segments else self.t_ns[0]

    @property
    def last_t_ns(self) -> int:
        if self.segments:
            t0, step, n = self.segments[-1]
            return t0 + (n - 1) * step
        return self.t_ns[-1]

    def __len__(self) -> int:
        return self._n

    @property
    def end_seq(self) -> int:
        return self.first_seq + self._n

    def index_at(self, t_ns: int, lo: int = 0, hi: int | None = None) -> int:
        """Index of the first sample at or after ``t_ns`` within ``[lo, hi)``."""
        hi = self._n if hi is None else hi
        if self.segments is not None and len(self.segments) == 1:
            t0, step, _ = self.segments[0]
            i = -((t0 - t_ns) // step)  # ceil((t_ns - t0) / step)
            return min(max(i, lo), hi)
        return bisect.bisect_left(self.t_ns, t_ns, lo, hi)

    @staticmethod
    def join(blocks: list[Block]) -> Block:
        """Consecutive blocks as one (one message in the file instead of several); frames
        of one layout stay undecoded and times unlisted, so the joined block does each in
        one go."""
        if len(blocks) == 1:
            return blocks[0]
        first = blocks[0]
        segments: tuple[Segment, ...] | None = None
        t_ns: array[int] | None = None
        if all(b.segments is not None for b in blocks):
            segments = tuple(x for b in blocks for x in b.segments or ())
        else:
            segments, t_ns = None, array("q")
            for b in blocks:
                t_ns += b.t_ns
        layout = first.layout
        if layout is not None and all(b.layout is layout or b.layout == layout
                                      for b in blocks):
            return Block(first.first_seq, t_ns, raw=b"".join(b.raw for b in blocks),
                         layout=layout, segments=segments)
        columns: tuple[array[float], ...] = tuple(array("f") for _ in first.columns)
        for b in blocks:
            for joined, column in zip(columns, b.columns, strict=True):
                joined += column
        return Block(first.first_seq, t_ns, columns, segments=segments)

    def slice(self, start_seq: int, start_ns: int | None = None,
              stop_before_ns: int | None = None) -> Block:
        """The samples from ``start_seq`` on, within ``[start_ns, stop_before_ns)`` if given."""
        hi = self._n
        lo = min(max(0, start_seq - self.first_seq), hi)
        if start_ns is not None and lo < hi and self.first_t_ns < start_ns:
            lo = self.index_at(start_ns, lo, hi)
        if stop_before_ns is not None and lo < hi and self.last_t_ns >= stop_before_ns:
            hi = max(lo, self.index_at(stop_before_ns, lo, hi))
        if lo == 0 and hi == self._n:
            return self
        if self.segments is not None and len(self.segments) == 1:
            t0, step, _ = self.segments[0]
            times: dict[str, Any] = {"segments": ((t0 + lo * step, step, hi - lo),)}
        else:
            times = {"t_ns": self.t_ns[lo:hi]}
        if self.layout is not None:
            size = self.layout.frame_bytes
            return Block(self.first_seq + lo, raw=self.raw[lo * size:hi * size],
                         layout=self.layout, **times)
        return Block(self.first_seq + lo, columns=tuple(c[lo:hi] for c in self.columns),
                     **times)


def segment_times(segments: tuple[Segment, ...], offset_ns: int = 0) -> array[int]:
    """The instants of ``segments``, each plus ``offset_ns``, as one int64 array."""
    np = numpy_in_use()
    out: array[int] = array("q")
    if np is not None:
        if segments:  # t0 + i·step for every segment at once, whatever their number
            table = np.array(segments, dtype=np.int64)
            counts = table[:, 2]
            index = np.arange(int(counts.sum()), dtype=np.int64)
            firsts = np.cumsum(counts) - counts  # each segment's first index
            steps = table[:, 1]
            if (steps == steps[0]).all():  # the usual case: one step throughout
                out.frombytes((np.repeat(table[:, 0] + offset_ns - firsts * steps[0], counts)
                               + index * steps[0]).tobytes())
            else:
                out.frombytes((np.repeat(table[:, 0] + offset_ns, counts)
                               + (index - np.repeat(firsts, counts)) * np.repeat(steps, counts)
                               ).tobytes())
        return out
    for t0, step, n in segments:
        start = t0 + offset_ns
        out.fromlist(list(range(start, start + n * step, step)))  # array(range) is slower
    return out


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
        self._provisional: Gap | None = None  # a loss whose end the next frames tell
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
            return self._blocks[-1].last_t_ns if self._blocks else None

    def append(self, t0_ns: int, step_ns: int, frames: int, raw: bytes,
               layout: FrameLayout) -> None:
        """Add one read's ``frames`` samples, sampled at ``t0_ns + i·step_ns``: kept as the
        frames read (14–16 bytes a sample) and those two numbers, so a minute of two
        1 kHz sensors takes under 2 MB and a read costs no work per sample."""
        if frames <= 0:
            return
        block = Block.read(t0_ns, step_ns, frames, raw, layout)
        with self._lock:
            block.first_seq = self._next_seq
            self._blocks.append(block)
            self._next_seq += frames
            self._held += frames
            blocks = self._blocks
            while self._held - blocks[0]._n >= self.capacity_samples:
                self._held -= blocks.popleft()._n

    def add_gap(self, gap: Gap | None, *, settles_pending: bool = False) -> None:
        """Record ``gap``; with ``settles_pending`` it replaces the provisional gap, at once
        (a reader sees one or the other, never both or neither)."""
        with self._lock:
            if gap is not None:
                self._gaps.append(gap)
            if settles_pending:
                self._provisional = None

    def set_provisional_gap(self, gap: Gap | None) -> None:
        """A loss still running, at its longest: listed by :meth:`gaps_between` until a gap
        added with ``settles_pending`` replaces it."""
        with self._lock:
            self._provisional = gap

    def gaps_between(self, start_ns: int, end_ns: int) -> list[Gap]:
        """Gaps overlapping ``[start_ns, end_ns)``, a provisional one included."""
        with self._lock:
            gaps = list(self._gaps)
            if self._provisional is not None:
                gaps.append(self._provisional)
        return [g for g in gaps if g.end_ns > start_ns and g.start_ns < end_ns]

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
            if block.first_t_ns < t_ns:
                return block.first_seq + block.index_at(t_ns)
        return blocks[0].first_seq if blocks else next_seq
