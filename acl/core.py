"""The one switch between the compiled core and its pure-Python twins.

``ACL_NO_EXTENSIONS=1`` forces the twins.  Otherwise each compiled module is
used when it imports; only ``ImportError`` falls back, so a compiled core that
is present but broken fails loudly instead of silently running slow.

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

Each says "compiled" or "pure".
"""

from __future__ import annotations

import importlib
import os

FORCE_PURE = os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0")


def _pick(compiled: str, pure: str):
    """Import ``compiled`` unless forced pure; fall back on ImportError only."""
    if not FORCE_PURE:
        try:
            return importlib.import_module(compiled), "compiled"
        except ImportError:
            pass
    return importlib.import_module(pure), "pure"


_prefix, IMPLEMENTATION = _pick("acl._core", "acl._core_py")
__all__ = list(_prefix.__all__)
globals().update({name: getattr(_prefix, name) for name in __all__})

limits, LIMITS_IMPLEMENTATION = _pick("acl._limits", "acl._limits_py")
engine_kernel, ENGINE_IMPLEMENTATION = _pick("acl._engine", "acl._engine_py")
hosts_scan, HOSTS_SCAN_IMPLEMENTATION = _pick("acl._hosts_scan", "acl._hosts_scan_py")
