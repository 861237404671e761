"""Lookups in the C library's passwd, group, protocols and services
databases that tell "there is no such entry" from "it could not be asked".

Rules of this file:

* Python's ``pwd.getpwnam``, ``pwd.getpwuid``, ``grp.getgrnam``,
  ``socket.getprotobyname``, ``socket.getservbyname`` and
  ``socket.getservbyport`` say "not found"
  (KeyError, OSError) for every failure: the C library's reason is
  dropped.  Out of descriptors (a connection flood fills acl's table),
  glibc's ``files`` module cannot open /etc/passwd and the reentrant call
  returns EMFILE -- or, once libnss_systemd is loaded (``passwd: files
  systemd``, Debian's default), NULL and no error at all: measured with
  glibc 2.36 (tests/test_nss.py).  Taken for "no such user", a shortage
  disabled an xinetd service, made a hosts.allow ``user`` option deny, or
  failed a policy load as bad input, and made ``acl audit`` miss the
  name a port is known by.
* So a miss is not believed at once.  The entry is asked again with the
  reentrant call (``getpwnam_r``, ``getgrnam_r``, ``getpwuid_r``,
  ``getprotobyname_r``, ``getservbyname_r``, ``getservbyport_r``), whose return value is the C
  library's reason when it gives one, and a descriptor is opened and
  closed, which tells when a module hides the reason (libnss_systemd) --
  either alone could miss a shortage: the probe, when a descriptor was
  freed in between.  A reason in :data:`acl.rulefiles.SHORTAGE`, or a
  descriptor that cannot be opened for one, raises
  :class:`acl.errors.OutOfResources` ("looking up user 'www':
  Too many open files (acl is out of descriptors or memory: a temporary
  failure)") -- the lookup could not be done, as a file that could not be
  read (acl/rulefiles.py): a reload keeps the running policy and is tried
  again, a command exits 111.  Any other miss stands: the exception
  Python raises.  An entry the second ask finds is asked of Python once
  more (the first miss was a passing failure); should that miss too, it
  is OutOfResources as well -- the entry is there, the asking failed.
* The C library is the one already loaded (``CDLL(None)``, as
  acl/serve/capabilities.py): nothing is looked up on disk at import, and
  it works after a chroot.
* A hit is believed: the C library found the entry.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import socket

from acl.errors import OutOfResources
from acl.rulefiles import short_of_resources

__all__ = ["getpwnam", "getpwuid", "getgrnam", "getprotobyname", "getservbyname",
           "getservbyport"]

_LIBC = ctypes.CDLL(None, use_errno=True)
#: room for any of struct passwd, group, protoent, servent (48 bytes at most)
_ENTRY = 256
_FIRST_BUFFER = 16 << 10
_LAST_BUFFER = 1 << 20


def _reason(fn: str, *args) -> tuple[int, bool]:
    """(the error number, found) of the reentrant lookup ``fn``; 0 and
    False when the C library has no such function."""
    call = getattr(_LIBC, fn, None)
    if call is None:
        return 0, False
    size = _FIRST_BUFFER
    while True:
        entry = ctypes.create_string_buffer(_ENTRY)
        buf = ctypes.create_string_buffer(size)
        found = ctypes.c_void_p()
        err = call(*args, entry, buf, ctypes.c_size_t(size), ctypes.byref(found))
        if err != errno.ERANGE or size >= _LAST_BUFFER:
            return err, bool(found.value)
        size *= 4


def _found_after_all(what: str, fn: str, *args) -> bool:
    """After Python found nothing: True when the entry is there after all;
    False when there is none; OutOfResources when the lookup could not be
    done (the file's rules)."""
    err, found = _reason(fn, *args)
    if found:
        return True
    short_of_resources(OSError(err, os.strerror(err)), f"looking up {what}")
    try:
        os.close(os.open("/", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        short_of_resources(exc, f"looking up {what}")
    return False


def _c(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _lookup(what: str, ask, missing: type[Exception], fn: str, *args):
    """``ask()``, a miss (``missing``) checked with the reentrant ``fn``
    (the file's rules)."""
    try:
        return ask()
    except missing:
        if not _found_after_all(what, fn, *args):
            raise
    try:
        return ask()
    except missing as exc:
        raise OutOfResources(f"looking up {what}: found by the C library, then missed again "
                             "(acl is out of descriptors or memory: a temporary failure)") from exc


def getpwnam(name: str) -> pwd.struct_passwd:
    return _lookup(f"user {name!r}", lambda: pwd.getpwnam(name), KeyError, "getpwnam_r", _c(name))


def getpwuid(uid: int) -> pwd.struct_passwd:
    return _lookup(f"uid {uid}", lambda: pwd.getpwuid(uid), KeyError, "getpwuid_r",
                   ctypes.c_uint(uid))


def getgrnam(name: str) -> grp.struct_group:
    return _lookup(f"group {name!r}", lambda: grp.getgrnam(name), KeyError, "getgrnam_r", _c(name))


def getprotobyname(name: str) -> int:
    return _lookup(f"protocol {name!r}", lambda: socket.getprotobyname(name), OSError,
                   "getprotobyname_r", _c(name))


def getservbyname(name: str, protocol: str) -> int:
    return _lookup(f"service {name}/{protocol}", lambda: socket.getservbyname(name, protocol),
                   OSError, "getservbyname_r", _c(name), _c(protocol))


def getservbyport(port: int, protocol: str) -> str:
    # the C call takes the port in network byte order, as struct servent holds it
    return _lookup(f"port {port}/{protocol}", lambda: socket.getservbyport(port, protocol),
                   OSError, "getservbyport_r", ctypes.c_int(socket.htons(port)), _c(protocol))
