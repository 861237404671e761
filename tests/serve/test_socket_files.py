"""The socket files ``acl serve`` makes: their mode, as the policy gives it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from acl.errors import PolicyError
from acl.policy import load_policy

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
