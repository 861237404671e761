"""The one switch between the compiled core and its pure-Python twin.

``ACL_NO_EXTENSIONS=1`` forces the twin.  Otherwise the compiled modules are
used when they import; only ``ImportError`` falls back, so a compiled core that
is present but broken fails loudly instead of silently running slow.
``IMPLEMENTATION`` says which one runs ("compiled" or "pure").
"""

from __future__ import annotations

import os

if os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0"):
    from acl._core_py import *  # noqa: F403
    from acl._core_py import __all__  # noqa: F401

    IMPLEMENTATION = "pure"
else:
    try:
        from acl._core import *  # noqa: F403
        from acl._core import __all__  # noqa: F401

        IMPLEMENTATION = "compiled"
    except ImportError:
        from acl._core_py import *  # noqa: F403
        from acl._core_py import __all__  # noqa: F401

        IMPLEMENTATION = "pure"

# The limits core (cps, per_source/instances leases, token buckets) follows
# the same switch: ``limits`` is ``acl._limits`` or its twin ``acl._limits_py``.
if os.environ.get("ACL_NO_EXTENSIONS", "") not in ("", "0"):
    from acl import _limits_py as limits  # noqa: F401

    LIMITS_IMPLEMENTATION = "pure"
else:
    try:
        from acl import _limits as limits  # noqa: F401

        LIMITS_IMPLEMENTATION = "compiled"
    except ImportError:
        from acl import _limits_py as limits  # noqa: F401

        LIMITS_IMPLEMENTATION = "pure"
