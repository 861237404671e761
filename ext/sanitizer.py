"""The compiler flags of acl's sanitizer build: the one list every native part uses.

Rules of this file:

* ``ACL_SANITIZE`` names the sanitizers, as ``-fsanitize=`` takes them
  (tests/sanitize uses ``address,undefined``).  Unset or empty,
  :func:`flags` is empty and every build is the normal one.
* One list compiles and links.  It goes after a build's own flags, since
  later flags win: its -O1 replaces their -O2/-O3, and with frame pointers
  and debug information a report shows whole stacks with lines.
* Who reads it: setup.py (the Cython extensions and acl-wrap),
  ext/nfq_build.py (the NFQUEUE binding) and, through tests/conftest.py,
  the tests that compile C of their own (tests/wrap, tests/core/test_textaddr.py).
  ext/ is no package and a PEP 517 build may not put setup.py's directory
  on sys.path, so each runs this file by its path (``runpy.run_path``, one
  standard call: no loader of ours to keep in three copies) and takes the
  functions from the namespace it returns: it imports nothing but the
  standard library.
"""

from __future__ import annotations

import os

#: The variable that turns the sanitizer build on.
ENV = "ACL_SANITIZE"


def sanitizers(environ=os.environ) -> str:
    """The ``-fsanitize=`` list asked for, or "" (the normal build)."""
    return environ.get(ENV, "")


def flags(environ=os.environ) -> list[str]:
    """Compile and link flags of the sanitizer build ([] for the normal one)."""
    which = sanitizers(environ)
    return [f"-fsanitize={which}", "-fno-omit-frame-pointer", "-g", "-O1"] if which else []
