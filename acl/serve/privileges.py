"""Give up root once every socket is bound: optional chroot, then group, then user.

The order matters: ``chroot`` needs root; supplementary groups and the gid
must be set while still root; ``setuid`` last, after which nothing can be
taken back.  A name that does not exist is an error, never a silent "stay
root"; one that could not be looked up (out of descriptors: acl/nss.py)
says so.

``setuid`` away from root empties the capability sets.  Capabilities named
in ``keep`` (the NFQUEUE door's CAP_NET_ADMIN: the kernel checks it on every
verdict) survive it, and only they: acl/serve/capabilities.py.

Before a ``chroot``, libgcc_s is loaded: glibc loads it on demand to unwind
a thread that ends by ``pthread_exit`` -- as CPython ends daemon threads
(the reload and name-lookup pools) at interpreter exit -- and inside the
new root the file is usually missing, so glibc printed "libgcc_s.so.1 must
be installed for pthread_exit to work" and aborted: ``acl serve`` stopped
by SIGABRT instead of exit 0.  Once loaded, glibc finds it by its soname
without the file system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from acl import nss
from acl.errors import AclError
from acl.serve import capabilities


def resolve(user: str, group: str) -> tuple[int | None, int | None]:
    uid = gid = None
    if user:
        pw = nss.getpwnam(user) if not user.isdigit() else nss.getpwuid(int(user))
        uid, gid = pw.pw_uid, pw.pw_gid
    if group:
        gid = nss.getgrnam(group).gr_gid if not group.isdigit() else int(group)
    return uid, gid


_UNWINDER = []       # the loaded libgcc_s, kept referenced for the process's life


def _load_unwinder() -> None:
    """Load libgcc_s while the real root is visible (module rules)."""
    if _UNWINDER:
        return
    try:
        _UNWINDER.append(ctypes.CDLL(ctypes.util.find_library("gcc_s") or "libgcc_s.so.1"))
    except OSError:          # a C library that unwinds without it (musl, static)
        pass


def drop(user: str = "", group: str = "", chroot: str = "",
         keep: tuple[int, ...] = ()) -> tuple[int, int]:
    """Drop to ``user``/``group`` (optionally inside ``chroot``), keeping the
    capabilities ``keep`` across a user change; returns the (uid, gid) now in
    effect."""
    uid, gid = resolve(user, group)      # look names up before chroot hides /etc
    if chroot:
        _load_unwinder()
        os.chroot(chroot)
        os.chdir("/")
    if gid is not None:
        os.setgroups([gid])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        try:
            if keep:
                capabilities.before_setuid(keep)
            os.setresuid(uid, uid, uid)
            if keep:
                capabilities.after_setuid(keep)
        except OSError as exc:
            if not keep:
                raise
            raise AclError(f"[run] user {user!r}: cannot keep {capabilities.names(keep)} "
                           f"across the user change: {exc}") from None
    return os.getuid(), os.getgid()


def rebase(path: str, chroot: str) -> str:
    """A path as seen from inside ``chroot`` (unchanged when not under it)."""
    if not chroot or not path:
        return path
    root = os.path.abspath(chroot).rstrip("/") + "/"
    full = os.path.abspath(path)
    return "/" + full[len(root):] if full.startswith(root) else path
