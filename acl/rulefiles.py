"""Reading the files a policy names: regular files only.

Rules of this file:

* Every file acl reads as policy -- the TOML file, hosts.allow/deny and
  their ``/file`` patterns, tcprules text and cdb files, xinetd files and
  their includes, the ``[names] hosts_file`` -- is opened with
  ``O_NONBLOCK`` and checked with ``fstat`` before a byte is read.
* A regular file is read whole.  A directory raises IsADirectoryError, as
  ``open()`` + ``read()`` would, so each caller keeps its own meaning for
  it (libwrap reads a directory as an empty table).
* Anything else -- a FIFO, a character or block device, a socket -- raises
  :class:`NotRegularFile`, an OSError that every caller already reports as
  a file it cannot read.  Why: a FIFO with no writer would block the reload
  thread forever, and ``/dev/zero`` or ``/dev/urandom`` would be read until
  memory ran out.  tcpd blocks or reads forever too, but for one connection
  at a time; the sidecar decides for every client.  ``O_NONBLOCK`` makes
  the open itself return at once for a FIFO with no writer; it changes
  nothing for a regular file.
"""

from __future__ import annotations

import errno
import os
import stat


class NotRegularFile(OSError):
    """A policy file that is not a regular file (nor a directory)."""


def _not_regular(mode: int) -> str:
    """What to say of a file of ``mode`` that is neither regular nor a directory."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"{kind}, not a regular file"
    return "not a regular file"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole content of the regular file ``path`` (see the module rules)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, _not_regular(mode), os.fspath(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)

