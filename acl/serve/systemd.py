"""systemd integration written out by hand: ``sd_notify`` and socket activation.

* ``notify(text)``: one datagram to ``$NOTIFY_SOCKET`` (a path, or an
  abstract socket when it starts with ``@``), e.g. ``READY=1``,
  ``RELOADING=1\\nMONOTONIC_USEC=...``, ``STOPPING=1``.  Without the variable it
  does nothing; a send that fails is ignored (systemd may be gone).  It
  sends on one socket, connected by ``connect_notify()`` when ``acl serve``
  starts -- before a chroot would hide the path (a READY=1 that never
  arrives is a start systemd times out) -- and it waits at most
  ``NOTIFY_WAIT_S`` (0.1 s, on the event loop) for room in systemd's queue.
* ``listen_fds()``: the sockets systemd passed (``LISTEN_PID`` must be this
  process, ``LISTEN_FDS`` of them from fd 3), keyed by their
  ``LISTEN_FDNAMES`` entry.  The variables are removed so children do not
  inherit them.  Descriptors systemd kept for us in its file descriptor
  store (``FDSTORE=1``: acl/serve/leasestore.py) come back among them under
  the names we gave them (``STORE_NAME``: ``acl-lease-conn-N``,
  ``acl-lease-journal-N`` -- never a unit's name, which has a dot); they
  are no socket role, and go to the caller's ``stored`` list instead, each
  one (systemd may pass a name more than once: it keeps whatever it was
  given under a name; leasestore.py chooses).
* ``FdStoreLink``: a datagram socket connected to ``$NOTIFY_SOCKET`` once,
  at start (before a chroot could hide the path), that sends notifications
  carrying descriptors (``FDSTORE=1``) in one ``sendmsg`` each.  A send
  never blocks: when systemd's socket is full it fails at once, or after
  waiting at most the ``wait_s`` it is given (a start may wait; the event
  loop never does).  systemd sends no reply: a sent ``FDSTORE=1`` may
  still be closed by systemd (its store full), and acl cannot know.

Names (sd_listen_fds_with_names(3)): systemd names each fd by the socket
unit's ``FileDescriptorName=``, else by the unit's own name
(``acl-metrics-remote.socket``); "unknown" stands for a name it does not
have.  A socket is trusted with a role only by name (the fd store's
names set apart first):

* every name must be one of ``ORDER``, each at most once -- any other name
  (a unit's name, "unknown" beside real names, a missing entry) refuses the
  start (:class:`PassedSocketError`), never guesses: a TCP socket meant for a
  remote Prometheus would otherwise become the Postfix policy socket;
* with no names at all (``LISTEN_FDNAMES`` unset, as older activators and
  ``systemd-socket-activate`` without ``--fdname`` pass them, or every entry
  empty or "unknown") the fds take the roles of ``ORDER`` in turn, the
  positional order docs/configuration.md promises; more than four is refused.
"""

from __future__ import annotations

import array
import os
import re
import select
import socket
import time

from acl.errors import AclError

SD_LISTEN_FDS_START = 3
ORDER = ("query", "policy", "admin", "metrics")
#: The names acl gives the descriptors it hands to systemd's fd store
#: (acl/serve/leasestore.py): no socket role, and no unit name (no dot).
STORE_NAME = re.compile(r"acl-lease-(conn|journal)-[0-9]{1,20}\Z")


class PassedSocketError(AclError):
    """The passed sockets' names do not say which role each one has: a unit
    to fix, not a condition to wait out (``acl serve`` exits 100)."""


#: The socket notify() sends on: ($NOTIFY_SOCKET, its link), connected once.
_status_link: tuple[str, FdStoreLink] | None = None
#: The longest notify() waits for room in systemd's queue: it runs on the
#: event loop, and a full queue (systemd's is several MiB) is a systemd busy
#: elsewhere -- a lost READY=1 is the lesser harm than every client held.
NOTIFY_WAIT_S = 0.1


def connect_notify(env=None) -> bool:
    """Connect the socket :func:`notify` sends on, now: before a chroot hides
    ``$NOTIFY_SOCKET``'s path (``/run/systemd/notify``), and before a flood
    of clients could leave no descriptor to connect one with.  False when
    there is no such variable or it cannot be reached."""
    global _status_link
    env = os.environ if env is None else env
    where = env.get("NOTIFY_SOCKET", "")
    if not where:
        return False
    if _status_link is not None and _status_link[0] == where:
        return True
    try:
        link = FdStoreLink(env)
    except OSError:
        return False
    if _status_link is not None:
        _status_link[1].close()
    _status_link = (where, link)
    return True


def notify(text: str, env=None) -> bool:
    """One status datagram (``READY=1``, ...); False when it was not sent
    (after an error other than a full queue the next call connects again:
    systemd may have been re-executed)."""
    global _status_link
    if not connect_notify(env):
        return False
    link = _status_link[1]
    if link.send(text.encode(), [], NOTIFY_WAIT_S):
        return True
    if link.broken:         # (a full queue keeps the link: under a chroot
        link.close()        # no new one could be connected)
        _status_link = None
    return False


def reloading_text() -> str:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"


def listen_fds(unset: bool = True, stored: list[tuple[str, int]] | None = None
               ) -> dict[str, socket.socket]:
    """The passed sockets by role; ``stored`` (when given) gets the fd
    store's descriptors, (name, fd) in the order passed (without it they
    are closed)."""
    env = os.environ
    try:
        pid = int(env.get("LISTEN_PID", "0"))
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "")
    if unset:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
    if pid != os.getpid() or count <= 0:
        return {}
    sockets, found = split_stored(names.split(":") if names else [], count)
    for i in range(count):
        os.set_inheritable(SD_LISTEN_FDS_START + i, False)
    for name, fd in found:
        if stored is not None:
            stored.append((name, fd))
        else:
            os.close(fd)
    if not sockets:
        return {}
    roles = _roles([n for _, n in sockets], len(sockets), [fd for fd, _ in sockets])
    return {role: socket.socket(fileno=fd) for (fd, _), role in zip(sockets, roles, strict=True)}


def split_stored(given: list[str], count: int
                 ) -> tuple[list[tuple[int, str]], list[tuple[str, int]]]:
    """``count`` passed fds named ``given``: the sockets, (fd, name) in
    order, and the fd store's descriptors (``STORE_NAME``), (name, fd) in
    order -- every one, a name passed twice included: it is no socket."""
    given = given[:count] + [""] * (count - len(given))
    sockets, stored = [], []
    for i, name in enumerate(given):
        fd = SD_LISTEN_FDS_START + i
        if STORE_NAME.match(name):
            stored.append((name, fd))
        else:
            sockets.append((fd, name))
    return sockets, stored


def _roles(given: list[str], count: int, fds: list[int] | None = None) -> list[str]:
    """The role of each of ``count`` passed fds (numbered ``fds``, else from
    3 on), from their names (the rules at the top of this file)."""
    if all(n in ("", "unknown") for n in given):
        if count > len(ORDER):
            raise PassedSocketError(
                f"{count} sockets passed without names (LISTEN_FDNAMES); at most "
                f"{len(ORDER)} can take the roles {', '.join(ORDER)} in that order: "
                "name them with FileDescriptorName=")
        return list(ORDER[:count])
    given = given[:count] + [""] * (count - len(given))
    seen: set[str] = set()
    for i, name in enumerate(given):
        fd = fds[i] if fds is not None else SD_LISTEN_FDS_START + i
        if name not in ORDER:
            raise PassedSocketError(
                f"passed socket fd {fd} is named {name or '(nothing)'!r}, not one of "
                f"{', '.join(ORDER)}: set FileDescriptorName= in its socket unit "
                "(acl takes a passed socket's role from its name only)")
        if name in seen:
            raise PassedSocketError(f"passed socket fd {fd}: a second socket named {name!r}")
        seen.add(name)
    return given


class FdStoreLink:
    """Notifications that carry descriptors, to systemd's fd store
    (sd_notify(3) ``FDSTORE=1``, ``FDNAME=``, ``FDSTOREREMOVE=1``).  The
    socket is connected once, here; each send is one ``sendmsg``."""

    def __init__(self, env=None) -> None:
        env = os.environ if env is None else env
        where = env.get("NOTIFY_SOCKET", "")
        if not where:
            raise OSError("NOTIFY_SOCKET is not set")
        if where.startswith("@"):
            where = "\0" + where[1:]
        self.broken = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(where)
        except OSError:
            self.sock.close()
            raise

    def store(self, name: str, fd: int, wait_s: float = 0.0) -> bool:
        """Hand systemd a duplicate of ``fd`` named ``name``; False when the
        message could not be sent within ``wait_s`` seconds.  True says
        it was sent, not that systemd kept it (the file's rules)."""
        fds = array.array("i", [fd])
        return self.send(f"FDSTORE=1\nFDNAME={name}".encode(),
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], wait_s)

    def remove(self, name: str, wait_s: float = 0.0) -> bool:
        """Have systemd close every stored descriptor named ``name``."""
        return self.send(f"FDSTOREREMOVE=1\nFDNAME={name}".encode(), [], wait_s)

    def send(self, text: bytes, ancillary, wait_s: float) -> bool:
        """One datagram, never blocking longer than ``wait_s`` seconds."""
        end = time.monotonic() + wait_s
        while True:
            try:
                self.sock.sendmsg([text], ancillary, socket.MSG_DONTWAIT)
                return True
            except BlockingIOError:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                # room in systemd's queue (poll: a store's fds may number past 1024)
                poller = select.poll()
                poller.register(self.sock, select.POLLOUT)
                poller.poll(left * 1000)
            except OSError:
                self.broken = True      # not a full queue: systemd is not there
                return False

    def close(self) -> None:
        self.sock.close()
