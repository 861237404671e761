"""The system questions xinetd's parser asks, answered the same after a chroot.

xinetd checks a service's ``protocol`` in /etc/protocols, its ``user`` and
``group`` in the passwd and group databases, its ``server`` with
``access(X_OK)``, and a port it was not given in /etc/services (spec C.2);
a "no" disables (or drops) the service.  ``acl serve`` with ``[run] chroot``
reads the xinetd file again on every reload from inside the chroot, where
those files and the servers are usually missing: asked plainly, every
service would be disabled there although nothing in the file changed.

Rules of this file:

* The system is always asked first, and a "yes" is remembered.
* A "no" stands -- unless the root directory is no longer the one the
  remembered answers were read under (a chroot since), and the same
  question got a "yes" there: then that "yes" is the answer.  So a reload
  inside the chroot gives the services the first load gave them, while
  outside a chroot (or inside one whose own /etc answers) a user or server
  that went away disables its service, as it does in xinetd.
* A question that could not be asked -- out of descriptors, the C library
  cannot open /etc/passwd -- is no "no": it raises OutOfResources
  (acl/nss.py), and the load fails as a temporary failure, the running
  policy kept, as for a file that could not be read.
* One :class:`SystemLookups` is handed from a policy to the next on reload
  (acl.policy), like the name cache; a question first asked inside the
  chroot has no remembered answer, so it gets the chroot's own answer.
"""

from __future__ import annotations

import os

from acl import nss

__all__ = ["SystemLookups"]


def _root() -> tuple[int, int]:
    st = os.stat("/")
    return st.st_dev, st.st_ino


class SystemLookups:
    """See the module rules.  Each method returns the system's answer, or
    the one remembered from before a chroot when the system says no."""

    def __init__(self) -> None:
        self.root = _root()                  # where the remembered answers were read
        self._yes: dict[tuple, object] = {}

    def _ask(self, key: tuple, question):
        try:
            answer = question()
        except (OSError, KeyError):
            answer = None
        if answer is not None:
            if _root() == self.root:
                self._yes[key] = answer
            return answer
        if _root() != self.root:
            return self._yes.get(key)
        return None

    def protocol(self, name: str) -> bool:
        """``getprotobyname(name)`` succeeds (xinetd ``protocol``)."""
        return self._ask(("protocol", name), lambda: nss.getprotobyname(name)) is not None

    def user(self, name: str) -> bool:
        """``getpwnam(name)`` finds the user (xinetd ``user``)."""
        return self._ask(("user", name), lambda: nss.getpwnam(name).pw_uid) is not None

    def group(self, name: str) -> bool:
        """``getgrnam(name)`` finds the group (xinetd ``group``)."""
        return self._ask(("group", name), lambda: nss.getgrnam(name).gr_gid) is not None

    def executable(self, path: str) -> bool:
        """``access(path, X_OK)`` (xinetd ``server``)."""
        return self._ask(("server", path),
                         lambda: True if os.access(path, os.X_OK) else None) is not None

    def port(self, service: str, protocol: str) -> int | None:
        """``getservbyname(service, protocol)``, or None (/etc/services)."""
        return self._ask(("port", service, protocol),
                         lambda: nss.getservbyname(service, protocol))
