"""What a Unix socket path given to a command may be, checked before any
connect: ``acl query`` (the query and the admin socket) and ``acl reload``
say a path that cannot name a socket is bad input (exit 100), not that the
sidecar cannot be reached."""

from __future__ import annotations

import os

#: sun_path holds 108 bytes, its NUL included
MAX_SOCKET_PATH = 107


def socket_path_error(path: str) -> str | None:
    """Why ``path`` cannot name a Unix socket, or None."""
    n = len(os.fsencode(path))
    if n > MAX_SOCKET_PATH:
        return f"a Unix socket path is at most {MAX_SOCKET_PATH} bytes, this one is {n}"
    return None
