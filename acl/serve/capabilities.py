"""Linux capabilities of this thread: keep a few across the uid change.

Rules of this module (capabilities(7), prctl(2), capget(2)):

* ``setresuid`` from uid 0 to a non-zero uid empties the permitted,
  effective and ambient sets -- unless ``PR_SET_KEEPCAPS`` is on, which keeps
  the *permitted* set (effective is still emptied).  So :func:`before_setuid`
  turns it on, and :func:`after_setuid` makes permitted and effective hold
  exactly the kept capabilities (inheritable empty, which also empties the
  ambient set) and turns it off again.
* While still root (``CAP_SETPCAP``), :func:`before_setuid` also drops every
  other capability from the bounding set, so nothing this process ever
  executes can regain one.  Without ``CAP_SETPCAP`` (a supervisor that
  already narrowed the set) the bounding set is left as it is: permitted
  and effective are what the process can use.
* Capabilities are per thread, and ``capset``/``PR_SET_KEEPCAPS`` act on the
  calling thread only (glibc's ``setresuid`` changes every thread's uids,
  which empties the other threads' sets).  Call these from the thread that
  needs the capability -- for the NFQUEUE door, the event loop's thread,
  which sends every verdict.  Threads it starts later inherit its sets.
* ctypes on the C library already loaded (``CDLL(None)``): nothing is
  looked up on disk, so this works after a chroot too.
"""

from __future__ import annotations

import ctypes
import errno
import os

CAP_NET_ADMIN = 12
CAP_SETPCAP = 8
_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SETPCAP: "CAP_SETPCAP"}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return rc


def _prctl(option: int, arg: int = 0) -> int:
    return _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0))


def names(caps) -> str:
    return ", ".join(_NAMES.get(c, f"capability {c}") for c in caps)


def _mask(caps) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


def get() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as 64-bit masks."""
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    eff, perm, inh = (getattr(data[0], f) | getattr(data[1], f) << 32
                      for f in ("effective", "permitted", "inheritable"))
    return eff, perm, inh


def effective(cap: int) -> bool:
    return bool(get()[0] >> cap & 1)


def _set(eff: int, perm: int, inh: int) -> None:
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        data[i].effective = eff >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = perm >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inh >> (32 * i) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def before_setuid(keep) -> None:
    """Call as root, just before ``setresuid``: keep ``keep`` across it."""
    keep_mask = _mask(keep)
    if effective(CAP_SETPCAP):
        cap = 0
        while True:                      # up to the kernel's last capability
            if _prctl(_PR_CAPBSET_READ, cap) < 0:
                if ctypes.get_errno() == errno.EINVAL:
                    break
                _check(-1, f"PR_CAPBSET_READ {cap}")
            if not keep_mask >> cap & 1:
                _check(_prctl(_PR_CAPBSET_DROP, cap), f"PR_CAPBSET_DROP {cap}")
            cap += 1
    _check(_prctl(_PR_SET_KEEPCAPS, 1), "PR_SET_KEEPCAPS")


def after_setuid(keep) -> None:
    """Call just after ``setresuid``: permitted = effective = ``keep``, the rest gone."""
    m = _mask(keep)
    _set(m, m, 0)
    _check(_prctl(_PR_SET_KEEPCAPS, 0), "PR_SET_KEEPCAPS")
