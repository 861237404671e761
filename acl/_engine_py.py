"""Pure-Python twin of the engine's source table (``ext/acl/_engine.pyx``).

Rules (shared with the compiled ``SourceTable``):

* A source is 16 bytes: an IPv4 client is stored as ``::ffff:a.b.c.d`` (so a
  mapped client of an IPv6 socket is the same source), an IPv6 client is
  masked to the configured prefix length (``[limits] ipv6_prefix``).
* The table is bounded: ``capacity`` rounded up to a power of two (at least
  16) slots, open addressing, a splitmix64 mix of the two 64-bit halves
  (``mix(hi ^ mix(lo))``, big-endian) picks the first slot,
  at most ``PROBES`` slots are probed.  A new source takes the first empty
  probed slot; when all are taken, the probed entry seen least recently is
  evicted (the first one on a tie) and ``evictions`` counts it.  A flood of
  spoofed sources therefore costs a fixed amount of memory.
* Each entry is a token bucket: a new source starts with ``burst`` tokens;
  tokens grow by ``rate`` per second of ``now`` up to ``burst``; a request
  takes one token or is refused.  ``burst <= 0`` means ``max(1, rate)``.
  An older ``now`` (the wall clock stepped back) adds nothing and becomes
  the bucket's time, so refilling goes on from there instead of waiting for
  the clock to catch up.
* Out-of-range input is refused the same way by both twins, before anything
  changes: a packed address that is not 4 or 16 bytes, an ``ipv6_prefix``
  outside 0..128, a key that is not 16 bytes (``ValueError``); a ``now``
  that is not finite or more than ``MAX_NOW`` seconds from the epoch, a
  ``rate`` or ``burst`` that is negative or not finite (``ValueError``,
  the same message).  Within those bounds a bucket's tokens stay finite and
  not negative, which the compiled table's "tokens < 0: empty slot" needs.
"""

from __future__ import annotations

__all__ = ["SourceTable", "source_key", "PROBES", "MAX_NOW"]

PROBES = 8
#: the largest ``now`` (seconds, either side of the epoch) ``take`` accepts
MAX_NOW = float(1 << 32)
_M64 = (1 << 64) - 1
_MAPPED = b"\x00" * 10 + b"\xff\xff"
_INF = float("inf")


def source_key(packed: bytes, ipv6_prefix: int = 64) -> bytes:
    """4 or 16 packed bytes -> the 16-byte source key (see the rules)."""
    packed = bytes(packed)
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError("ipv6_prefix must be 0..128")
    if len(packed) not in (4, 16):
        raise ValueError("packed address must be 4 or 16 bytes")
    if len(packed) == 4:
        return _MAPPED + packed
    if packed[:12] == _MAPPED or ipv6_prefix >= 128:
        return bytes(packed)
    n = int.from_bytes(packed, "big")
    mask = ((1 << ipv6_prefix) - 1) << (128 - ipv6_prefix) if ipv6_prefix > 0 else 0
    return (n & mask).to_bytes(16, "big")


def _check_take(now: float, rate: float, burst: float) -> None:
    """ValueError unless ``now``, ``rate`` and ``burst`` are in range (the rules)."""
    if not -MAX_NOW <= now <= MAX_NOW:      # "in range": NaN fails it too
        raise ValueError(f"now must be a finite time within {MAX_NOW:.0f} s of the epoch, "
                         f"got {now!r}")
    if not (0 <= rate < _INF and 0 <= burst < _INF):
        raise ValueError("rate and burst must be finite and not negative")


def _mix(x: int) -> int:
    # splitmix64's finalizer; the compiled twin uses the same constants
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(key: bytes) -> int:
    return _mix(int.from_bytes(key[:8], "big") ^ _mix(int.from_bytes(key[8:], "big")))


class SourceTable:
    def __init__(self, capacity: int) -> None:
        cap = 16
        while cap < capacity:
            cap <<= 1
        self.capacity = cap
        self._keys: list[bytes | None] = [None] * cap
        self._tokens = [0.0] * cap
        self._last = [0.0] * cap
        self.tracked = 0
        self.evictions = 0

    def take(self, key: bytes, now: float, rate: float, burst: float) -> bool:
        """One request from source ``key`` at ``now``: True if it may pass."""
        key = bytes(key)
        if len(key) != 16:
            raise ValueError("source key must be 16 bytes")
        _check_take(now, rate, burst)
        if burst <= 0:
            burst = rate if rate > 1.0 else 1.0
        mask = self.capacity - 1
        h = _hash(key)
        slot = -1
        free = -1
        oldest = -1
        for i in range(PROBES):
            j = (h + i) & mask
            k = self._keys[j]
            if k == key:
                slot = j
                break
            if k is None:
                if free < 0:
                    free = j
            elif oldest < 0 or self._last[j] < self._last[oldest]:
                oldest = j
        if slot < 0:
            if free >= 0:
                slot = free
                self.tracked += 1
            else:
                slot = oldest
                self.evictions += 1
            self._keys[slot] = key
            self._tokens[slot] = burst
            self._last[slot] = now
        else:
            elapsed = now - self._last[slot]
            if elapsed > 0:
                tokens = self._tokens[slot] + elapsed * rate
                self._tokens[slot] = tokens if tokens < burst else burst
                self._last[slot] = now
            elif elapsed < 0:
                self._last[slot] = now     # clock stepped back: no refill, no lock-out
        if self._tokens[slot] >= 1.0:
            self._tokens[slot] -= 1.0
            return True
        return False
