"""Per-sample timestamps from FIFO read times and the frame count.

A chip's FIFO only tells us how many frames it holds, not when each was sampled. We
know that frame ``k`` (counted since the FIFO started) was the newest one when we read
the count at time ``t``, so it was sampled within one period before ``t``. Fitting a
straight line ``t(k) = a + P·k`` to those observations (least squares, exponentially
forgetting old ones with time constant ``window_s``) gives the chip's true period ``P``
(its oscillator may be a few percent off nominal), so timestamps follow the real
sampling instants without drifting over hours.

The phase comes from bounds rather than the fit's average: each read says frame ``k``
was present (``t(k) ≤ t``) and frame ``k + 1`` was not (``t(k) > t − P``). Carried
forward with the period and intersected read after read, these bounds narrow to a few
µs — the fit's intercept, extrapolated from tens of seconds back, scatters by tens of
µs. The bounds are relaxed by ``BOUND_RELAX`` per unit of time elapsed (the period
estimate is not exact); bounds carried so far that they contradict a read give way to it.
"""

from __future__ import annotations

import math

MIN_SPREAD_FRAMES = 50  # below this, the fit is phase-only with the last known period
MAX_RATE_ERROR = 0.1  # an estimate outside ±10 % of nominal is rejected as nonsense
# A fit's period is off by about 0.3 / √(Σw·x²) (x in frames; each read's phase is known to
# a period): 1e7 frames² is ~100 ppm, e.g. 3 s of reads at 1 kHz, 8 s at 200 Hz.
FORGOTTEN_MIN_SXX = 1e7
BOUND_RELAX = 1e-6  # ns of slack per ns elapsed (1 µs a second) for the phase bounds
# A count whose window is wider than this bus's usual window by more than this (a quarter
# period, 100 µs at least): the thread was stopped around the count's transfer. Such a read
# bounds the phase but is kept out of the fit, which takes each read as latched at its
# window's start. The usual window (syscall, completion, a bus slower than its nominal
# clock) follows a narrower window at once and a wider one by an eighth of the difference
# a read (2 µs at least): one stop moves it little, a lasting change within tens of reads.
STOPPED_FRACTION = 0.25
STOPPED_MIN_NS = 100_000
USUAL_WIDTH_FOLLOW_SHIFT = 3  # an eighth
USUAL_WIDTH_CREEP_NS = 2_000


class FrameTimebase:
    """Maps frame index → sampling instant (ns on the monotonic clock) for one sensor."""

    def __init__(self, nominal_period_ns: float, *, window_s: float = 60.0) -> None:
        self.nominal_period_ns = nominal_period_ns
        self.period_ns = nominal_period_ns
        self.window_ns = window_s * 1e9
        self.next_frame = 0  # index the next frame read will get
        self._usual_width_ns: int | None = None  # see USUAL_WIDTH_CREEP_NS
        self._last_ts: int | None = None
        self._last_obs_ns: int | None = None  # the running fit's last observation
        # The period is pooled over the fits a loss cut apart, each weighted by what it
        # knows (its centred Σw·x², decaying with the window as a fit's own sums do): a
        # few reads after an overflow give a period up to 1 % off, and a gap is counted
        # with it (1 % of a 5 s gap is 40 samples at 833 Hz).
        self._pool_w = self._pool_wp = 0.0  # Σ known, Σ known × period of finished fits
        self._pool_at = 0  # the instant the pool's weights refer to
        self._fit_w = self._fit_p = 0.0  # the running fit's known and period (0: none yet)
        self._min_w = 0.0  # after forget_period(): what must be known to replace the period
        self._reset_fit()

    def _reset_fit(self) -> None:
        if self._fit_w and self._last_obs_ns is not None:  # into the pool
            t = self._last_obs_ns
            decay = math.exp((self._pool_at - t) / self.window_ns)
            self._pool_w = self._pool_w * decay + self._fit_w
            self._pool_wp = self._pool_wp * decay + self._fit_w * self._fit_p
            self._pool_at = t
        self._fit_w = self._fit_p = 0.0
        # Sums over (x, y) = (frame - k0, t - t0), weighted; the origin follows the data.
        self._k0 = 0
        self._t0 = 0
        self._s0 = self._sx = self._sxx = self._sy = self._sxy = 0.0
        self._last_obs_ns = None
        self._bound_k: int | None = None  # the frame the phase bounds below refer to
        self._upper = self._lower = 0.0  # t(_bound_k) ≤ _upper and > _lower
        self._bound_read_ns = 0

    def stamp(self, frames: int, read_ns: int, latest_ns: int | None = None) -> tuple[int, int]:
        """Timestamps for ``frames`` (≥ 1) new frames whose newest was present when the
        count was latched, at ``read_ns`` (or somewhere up to ``latest_ns``, when the count's
        transfer was timed so): ``(first_ns, step_ns)``, frame ``i`` of them at
        ``first_ns + i·step_ns`` (ns, int64). Evenly spaced within a read, so they are kept
        as two numbers."""
        newest = self.next_frame + frames - 1
        self.next_frame += frames
        p = self.period_ns
        upper = read_ns  # what the read says for certain: newest ≤ upper, newest + 1 > read − p
        if latest_ns is not None:
            upper = max(read_ns, latest_ns)
            width = upper - read_ns
            usual = self._usual_width_ns
            if usual is None or width <= usual:
                usual = width
            else:
                usual += max(USUAL_WIDTH_CREEP_NS, (width - usual) >> USUAL_WIDTH_FOLLOW_SHIFT)
            self._usual_width_ns = usual
            stopped = width - usual > max(STOPPED_FRACTION * p, STOPPED_MIN_NS)
        else:
            stopped = False
        if not stopped:
            self._observe(newest, read_ns)
            p = self.period_ns
        start = int(self._bound(newest, read_ns, upper, p) - (frames - 1) * p)
        # Within one read the period is taken to the whole ns (≤ 0.5 ns × frames of error,
        # far below a sample period); every read re-anchors on the fit, so nothing adds up.
        step = round(p)
        last = start + (frames - 1) * step
        if last > upper:  # never into the future: frame ``newest`` predates the count
            start -= last - upper
            last = upper
        # and, above all, never step backwards between reads (nor into a gap): more frames
        # than fit since the last stamp means the phase was late, so this wins
        floor = int((self._last_ts or 0) + p / 2)
        if start < floor:
            last += floor - start
            start = floor
        self._last_ts = last
        return start, step

    def _bound(self, newest: int, read_ns: int, upper_ns: int, p: float) -> float:
        """Frame ``newest``'s instant: the middle of what every read so far allows (this
        one: after ``read_ns − p``, at or before ``upper_ns``)."""
        upper, lower = float(upper_ns), read_ns - p
        bound_k = self._bound_k
        if bound_k is not None:
            shift = (newest - bound_k) * p
            relax = (read_ns - self._bound_read_ns) * BOUND_RELAX
            carried_upper = self._upper + shift + relax
            carried_lower = self._lower + shift - relax
            if carried_upper <= lower:  # the carried bounds went stale (period error): they
                # lag this read's; keep their width
                upper = min(upper, lower + carried_upper - carried_lower)
            elif carried_lower >= upper:
                lower = max(lower, upper - (carried_upper - carried_lower))
            else:
                if carried_upper < upper:
                    upper = carried_upper
                if carried_lower > lower:
                    lower = carried_lower
        self._bound_k, self._upper, self._lower, self._bound_read_ns = \
            newest, upper, lower, read_ns
        return (upper + lower) / 2

    def skip(self, frames: int, *, resync: bool = True, until_ns: int | None = None,
             restarted: tuple[int, int] | None = None) -> None:
        """``frames`` were lost (overflow, outage); with ``resync`` the phase is re-learnt.
        ``until_ns``: the loss ran until then, so no later frame is stamped before it.
        ``restarted``: the FIFO restarted empty between these two instants while the chip
        sampled on, so the next frame was sampled within a period after it: the phase
        bounds until the next read says more."""
        self.next_frame += max(0, frames)
        if until_ns is not None:
            self._last_ts = max(self._last_ts or 0, until_ns)
        if resync:
            period = self.period_ns
            self._reset_fit()
            self.period_ns = period
        if restarted is not None:  # the frame before the next one: in (earliest − P, latest]
            earliest, latest = restarted
            self._bound_k = self.next_frame - 1
            self._upper, self._lower = float(latest), earliest - self.period_ns
            self._bound_read_ns = latest

    def forget_period(self) -> None:
        """The chip may have been swapped (it did not answer for a while): what was
        learnt is dropped, and the period is replaced once the new fits know
        :data:`FORGOTTEN_MIN_SXX`. Until then the old one counts."""
        self._pool_w = self._pool_wp = self._fit_w = self._fit_p = 0.0
        self._min_w = FORGOTTEN_MIN_SXX

    def _observe(self, k: int, t_ns: int) -> None:
        """Add the observation "frame ``k`` was sampled uniformly within one period before
        ``t_ns``" to the fit, forgetting older ones, and update the period estimate.

        The sums are over (x, y) = (frame − k0, t − t0) with the origin moved to this
        observation every time (so they stay small and exact in floating point). Written
        out with locals: this runs on every poll of every sensor."""
        y_abs = t_ns - self.period_ns / 2
        k0, t0 = k, int(y_abs)
        if self._last_obs_ns is None:
            s0 = sx = sxx = sy = sxy = 0.0
        else:
            decay = math.exp((self._last_obs_ns - t_ns) / self.window_ns)
            s0, sx, sy = self._s0 * decay, self._sx * decay, self._sy * decay
            sxx, sxy = self._sxx * decay, self._sxy * decay
            dk, dt = float(k0 - self._k0), float(t0 - self._t0)  # move the origin here
            sxy = sxy - dk * sy - dt * sx + dk * dt * s0
            sxx = sxx - 2 * dk * sx + dk * dk * s0
            sx -= dk * s0
            sy -= dt * s0
        y = y_abs - t0  # and x = 0: this observation is the origin
        s0 += 1
        sy += y
        self._k0, self._t0, self._last_obs_ns = k0, t0, t_ns
        self._s0, self._sx, self._sxx, self._sy, self._sxy = s0, sx, sxx, sy, sxy
        mean_x = sx / s0
        var_x = sxx / s0 - mean_x * mean_x
        if var_x > MIN_SPREAD_FRAMES**2:
            slope = (sxy / s0 - mean_x * sy / s0) / var_x
            if abs(slope / self.nominal_period_ns - 1) <= MAX_RATE_ERROR:
                # the slope's error is the reads' phase noise over √(s0·var_x)
                known = s0 * var_x
                self._fit_w, self._fit_p = known, slope
                pool_w = self._pool_w
                if pool_w:
                    decay = math.exp((self._pool_at - t_ns) / self.window_ns)
                    total = pool_w * decay + known
                    if total >= self._min_w:
                        self.period_ns = (self._pool_wp * decay + known * slope) / total
                        self._min_w = 0.0
                elif known >= self._min_w:
                    self.period_ns = slope
                    self._min_w = 0.0

    @property
    def rate_hz(self) -> float:
        """The chip's estimated true output rate."""
        return 1e9 / self.period_ns
