"""Reading the files a policy names: regular files only, and never a
shortage of descriptors taken for a file that cannot be read.

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
* Out of descriptors or memory (:data:`SHORTAGE`: EMFILE, ENFILE, ENOMEM,
  ENOBUFS -- a connection flood fills acl's descriptors) a read raises
  :class:`acl.errors.OutOfResources`, which is no OSError: no caller takes
  it for "the file cannot be opened".  That meaning is the real tool's, and
  the real tools read their files again for the next connection (libwrap),
  or when told to (xinetd); acl would keep a policy built from a failed read
  until the next reload -- hosts.allow read as an error, hosts.deny as
  "deny everybody", an include as missing.  So such a read fails the whole
  load instead: a reload keeps the running policy and is tried again
  (acl/serve/server.py), a command exits 111.
"""

from __future__ import annotations

import errno
import os
import stat

from acl.errors import OutOfResources

#: errnos that say the host is short of descriptors or memory, not that a
#: file is missing or unreadable
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class NotRegularFile(OSError):
    """A policy file that is not a regular file (nor a directory)."""


def _not_regular(mode: int) -> str:
    """What to say of a file of ``mode`` that is neither regular nor a directory."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"{kind}, not a regular file"
    return "not a regular file"


def short_of_resources(exc: OSError, what: str) -> None:
    """Raise OutOfResources for ``exc`` when its errno is one of SHORTAGE;
    ``what`` failed ("PATH: cannot read", "looking up NAME")."""
    if exc.errno in SHORTAGE:
        raise OutOfResources(f"{what}: {exc.strerror or os.strerror(exc.errno)} (acl is out "
                             "of descriptors or memory: a temporary failure)") from exc


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole content of the regular file ``path`` (see the module rules)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        short_of_resources(exc, f"{os.fspath(path)}: cannot read")
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, _not_regular(mode), os.fspath(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            try:
                return f.read()
            except OSError as exc:
                short_of_resources(exc, f"{os.fspath(path)}: cannot read")
                raise
    finally:
        os.close(fd)


def list_dir(path: str | os.PathLike) -> list[str]:
    """``os.listdir``, with a shortage raised as for :func:`read_bytes`."""
    try:
        return os.listdir(path)
    except OSError as exc:
        short_of_resources(exc, f"{os.fspath(path)}: cannot list")
        raise

