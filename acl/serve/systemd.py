"""systemd integration written out by hand: ``sd_notify`` and socket activation.

* ``notify(text)``: one datagram to ``$NOTIFY_SOCKET`` (a path, or an
  abstract socket when it starts with ``@``), e.g. ``READY=1``,
  ``RELOADING=1\\nMONOTONIC_USEC=...``, ``STOPPING=1``.  Without the variable it
  does nothing; a send that fails is ignored (systemd may be gone).
* ``listen_fds()``: the sockets systemd passed (``LISTEN_PID`` must be this
  process, ``LISTEN_FDS`` of them from fd 3), keyed by their
  ``LISTEN_FDNAMES`` entry; unnamed ones get the next of ``ORDER``.  The
  variables are removed so children do not inherit them.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3
ORDER = ("query", "policy", "admin", "metrics")


def notify(text: str, env=None) -> bool:
    env = os.environ if env is None else env
    where = env.get("NOTIFY_SOCKET", "")
    if not where:
        return False
    if where.startswith("@"):
        where = "\0" + where[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(where)
            s.sendall(text.encode())
        return True
    except OSError:
        return False


def reloading_text() -> str:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"


def listen_fds(unset: bool = True) -> dict[str, socket.socket]:
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
    given = names.split(":") if names else []
    out: dict[str, socket.socket] = {}
    spare = [n for n in ORDER]
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = given[i] if i < len(given) and given[i] not in ("", "unknown") else ""
        if name not in ORDER:
            name = next((n for n in spare if n not in out), f"fd{fd}")
        out[name] = sock
    return out
