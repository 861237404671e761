"""Memory that ends where an unreadable page begins, for the tests of the
native readers (tests/core/test_textaddr.py, tests/serve/test_batch_fuzz.py,
tests/nfq/test_fastpath.py, tests/wrap/test_fuzz.py).

Bytes placed at the end of the readable pages end exactly where readable
memory does: a reader that loads one byte past them crashes the test
(SIGSEGV), with or without AddressSanitizer.  A view still held when the
pages are closed (a failing assertion's frame) keeps the mapping until it
is collected, so the assertion is what the test reports.
"""

from __future__ import annotations

import ctypes
import mmap

PAGE = mmap.PAGESIZE


class GuardedPages:
    """``pages`` readable pages followed by a PROT_NONE one."""

    def __init__(self, pages: int):
        self.size = pages * PAGE
        self.map = mmap.mmap(-1, self.size + PAGE)
        #: the address of the first readable byte; ``start + size`` is the guard
        self.start = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(self.start + self.size, PAGE, 0) != 0:        # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")

    def at_end(self, data: bytes) -> memoryview:
        """``data`` copied to the end of the readable pages, as a view."""
        at = self._put(data)
        return memoryview(self.map)[at:self.size]

    def address_at_end(self, data: bytes) -> int:
        """``data`` copied to the end of the readable pages; its address."""
        return self.start + self._put(data)

    def room(self, n: int) -> int:
        """Address of the last ``n`` readable bytes, zeroed."""
        return self.start + self._put(bytes(n))

    def _put(self, data: bytes) -> int:
        assert len(data) <= self.size, (len(data), self.size)
        at = self.size - len(data)
        self.map[at:self.size] = data
        return at

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:     # a view is still held: the module rules
            pass

    def __enter__(self) -> GuardedPages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
