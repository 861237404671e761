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
"""

from __future__ import annotations

__all__ = ["SourceTable", "source_key", "PROBES"]

PROBES = 8
_M64 = (1 << 64) - 1
_MAPPED = b"\x00" * 10 + b"\xff\xff"


def source_key(packed: bytes, ipv6_prefix: int = 64) -> bytes:
    """4 or 16 packed bytes -> the 16-byte source key (see the rules)."""
    if len(packed) == 4:
        return _MAPPED + packed
    if packed[:12] == _MAPPED or ipv6_prefix >= 128:
        return bytes(packed)
    n = int.from_bytes(packed, "big")
    mask = ((1 << ipv6_prefix) - 1) << (128 - ipv6_prefix) if ipv6_prefix > 0 else 0
    return (n & mask).to_bytes(16, "big")


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
