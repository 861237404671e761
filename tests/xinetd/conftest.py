"""Fixtures of the xinetd area: the limits core twice (compiled and twin)."""

from __future__ import annotations

import pytest

from tests.conftest import load_impl


@pytest.fixture(params=["compiled", "pure"])
def limits(request):
    """The limits core module: ``acl._limits`` and its twin ``acl._limits_py``."""
    return load_impl(request.param, "acl._limits", "acl._limits_py")
