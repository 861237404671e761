"""The socket files ``acl serve`` makes: their mode, as the policy gives it;
and the roles of sockets passed by systemd.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from acl.errors import PolicyError
from acl.policy import load_policy
from acl.serve import systemd

from .conftest import policy_toml


@pytest.mark.parametrize("written, message", [
    ("600", 'sockets.mode: 600 is a decimal integer (mode 1130), not an octal mode: '
            'write "0600" or 0o600'),
    ('"7777"', "sockets.mode: '7777' is outside 0000..0777"),
    ("0o4660", "sockets.mode: 0o4660 is outside 0000..0777"),
    ("-1", "sockets.mode: -0o1 is outside 0000..0777"),
])
def test_a_mode_that_is_not_a_socket_mode_is_refused_with_its_position(
        tmp_path, written, message):
    cfg = policy_toml(tmp_path)
    text = cfg.read_text()
    cfg.write_text(text.replace('mode = "0666"', f"mode = {written}"))
    line = 1 + text[:text.index('mode = "0666"')].count("\n")
    with pytest.raises(PolicyError) as e:
        load_policy(cfg)
    assert str(e.value).startswith(f"{cfg}:{line}:8: {message}"), str(e.value)
    out = subprocess.run([sys.executable, "-m", "acl", "serve", "--config", str(cfg), "--check"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 100 and message in out.stderr, out.stderr


@pytest.mark.parametrize("written", ['"0600"', "0o600", '"600"'])
def test_octal_modes_are_taken(tmp_path, written):
    cfg = policy_toml(tmp_path)
    cfg.write_text(cfg.read_text().replace('mode = "0666"', f"mode = {written}"))
    assert load_policy(cfg).sockets.mode == 0o600


@pytest.mark.parametrize("names, count, roles", [
    ([], 2, ["query", "policy"]),                               # LISTEN_FDNAMES unset
    (["unknown", "unknown", "unknown"], 3, ["query", "policy", "admin"]),
    (["admin", "query"], 2, ["admin", "query"]),
    (["metrics"], 1, ["metrics"]),
])
def test_passed_sockets_get_roles_by_name_or_all_by_order(names, count, roles):
    assert systemd._roles(names, count) == roles


@pytest.mark.parametrize("names, count, message", [
    (["query", "acl.socket"], 2, "fd 4 is named 'acl.socket'"),
    (["query", "unknown"], 2, "fd 4 is named 'unknown'"),       # a name lost among real ones
    (["query"], 2, "fd 4 is named '(nothing)'"),
    (["query", "query"], 2, "fd 4: a second socket named 'query'"),
    ([], 5, "5 sockets passed without names"),
])
def test_passed_sockets_with_names_that_do_not_say_their_role_are_refused(names, count, message):
    with pytest.raises(systemd.PassedSocketError, match=re.escape(message)):
        systemd._roles(names, count)
