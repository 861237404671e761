"""The one switch between the compiled core and its pure-Python twins.

``ACL_NO_EXTENSIONS=1`` forces the twins.  Otherwise each compiled module is
used when it imports; only ``ImportError`` falls back, so a compiled core that
is present but broken fails loudly instead of silently running slow.

A compiled module counts only when it lives in this package's own directory
(beside this file).  An import system with more than one ``acl`` on it -- a
venv's pure install with the system site-packages' editable finder of a
source tree behind it -- would otherwise hand this package another tree's
``.so``: another version's core, reported as "compiled" by a "pure"
install.  Such a module is not executed; the twin runs, as if it were absent.

What it picks, and how to ask which one runs:

* the prefix core (``PrefixTable`` ...), re-exported here:
  ``acl._core`` or ``acl._core_py``; ``IMPLEMENTATION``;
* ``limits`` (cps, per_source/instances leases, token buckets, the bounded
  source table): ``acl._limits`` or ``acl._limits_py``;
  ``LIMITS_IMPLEMENTATION``;
* ``engine_kernel`` (the engine's source table and batch plan):
  ``acl._engine`` or ``acl._engine_py``; ``ENGINE_IMPLEMENTATION``;
* ``hosts_scan`` (hosts.allow client lists of plain IPv4 patterns straight to
  packed prefixes): ``acl._hosts_scan`` or ``acl._hosts_scan_py``;
  ``HOSTS_SCAN_IMPLEMENTATION``.

Each says "compiled" or "pure".  The build as a whole, ``BUILD``, is
"compiled" only when every one of them is, "pure" when none is, else "mixed"
(a partial build: ``PURE_PARTS`` names the modules whose twin runs).
``CORE_TEXT`` says it in words -- "compiled core", "mixed core, pure:
limits" -- for ``acl --version`` and ``acl serve``'s ready line; the admin
``stats`` and ``acl_core_info`` carry ``BUILD`` and ``PURE_PARTS``.
``acl serve`` refuses a mixed build as it refuses a pure one.
(The libnetfilter_queue binding, ``acl._nfq``, is optional and not a core
module: a policy that needs it is refused when it loads, acl.nfqueue_config.)
"""

from __future__ import annotations

import importlib
import importlib.util
import os

FORCE_PURE = os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0")

_HERE = os.path.dirname(os.path.abspath(__file__))


def _ours(origin: str | None) -> bool:
    """True when ``origin`` (a module's file) is in this package's directory,
    as written or with symbolic links resolved (an editable install's link
    tree may link either this file or the ``.so``)."""
    if not origin:
        return False
    where = os.path.dirname(os.path.abspath(origin))
    return where == _HERE or os.path.realpath(where) == os.path.realpath(_HERE)


def own_extension(name: str):
    """Import the compiled module ``name`` (``acl._core`` ...) when it lives
    in this package's directory; ImportError when it is absent or another
    tree's (then it is never executed).  acl.nfq loads ``acl._nfq`` so too."""
    spec = importlib.util.find_spec(name)
    if spec is None or not _ours(spec.origin):
        raise ImportError(f"{name} is not built in {_HERE}", name=name)
    module = importlib.import_module(name)
    if not _ours(getattr(module, "__file__", None)):
        raise ImportError(f"{name} is not built in {_HERE}", name=name)
    return module


def _pick(compiled: str, pure: str):
    """Import ``compiled`` unless forced pure, or absent, or not ours (see
    the rules above); fall back on ImportError only."""
    if not FORCE_PURE:
        try:
            return own_extension(compiled), "compiled"
        except ImportError:
            pass
    return importlib.import_module(pure), "pure"


_prefix, IMPLEMENTATION = _pick("acl._core", "acl._core_py")
__all__ = list(_prefix.__all__)
globals().update({name: getattr(_prefix, name) for name in __all__})

limits, LIMITS_IMPLEMENTATION = _pick("acl._limits", "acl._limits_py")
engine_kernel, ENGINE_IMPLEMENTATION = _pick("acl._engine", "acl._engine_py")
hosts_scan, HOSTS_SCAN_IMPLEMENTATION = _pick("acl._hosts_scan", "acl._hosts_scan_py")

#: each core module's implementation, by the name the reports use
IMPLEMENTATIONS = {"prefix": IMPLEMENTATION, "limits": LIMITS_IMPLEMENTATION,
                   "engine": ENGINE_IMPLEMENTATION, "hosts_scan": HOSTS_SCAN_IMPLEMENTATION}
#: the modules whose pure twin runs (empty: the whole core is compiled)
PURE_PARTS = tuple(name for name, impl in IMPLEMENTATIONS.items() if impl == "pure")
#: True only when every core module is compiled
COMPILED = not PURE_PARTS
#: "compiled", "pure" or "mixed"
BUILD = ("compiled" if COMPILED else "pure" if len(PURE_PARTS) == len(IMPLEMENTATIONS)
         else "mixed")
#: the build in words: "compiled core", "pure core", "mixed core, pure: limits"
CORE_TEXT = f"{BUILD} core" + (f", pure: {', '.join(PURE_PARTS)}" if BUILD == "mixed" else "")
