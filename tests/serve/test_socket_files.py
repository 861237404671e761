"""The socket files ``acl serve`` makes: where (a runtime directory that must
be ours), with which mode (born with it: no chmod by a path someone could
swap), and what is said when they cannot be removed on stop.

The root-only tests pre-create directories as uid 65534, the attacker of
the audit's repro (another local user who made /tmp/acl-0 first).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest

from acl.engine import KERNEL, Engine
from acl.errors import PolicyError
from acl.policy import load_policy
from acl.serve import server as server_mod
from acl.serve import systemd
from acl.serve.server import Server

from .conftest import policy_toml, start_server

NOBODY = 65534
root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root (chown to another user)")


def _serve_example(runtime: str) -> subprocess.CompletedProcess:
    """``acl serve`` with no --config (the quick start): its sockets go to
    $XDG_RUNTIME_DIR/acl.  Expected to exit at once."""
    env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
    env["XDG_RUNTIME_DIR"] = runtime
    return subprocess.run([sys.executable, "-m", "acl", "serve", "--metrics", ""],
                          capture_output=True, text=True, timeout=30, env=env, cwd=runtime)


@root_only
def test_a_runtime_dir_another_user_made_is_refused(tmp_path):
    rd = tmp_path / "acl"
    rd.mkdir()
    os.chmod(rd, 0o777)
    os.chown(rd, NOBODY, NOBODY)
    out = _serve_example(str(tmp_path))
    assert out.returncode == 111, out.stderr
    assert (f"acl serve: fatal: cannot listen: {rd}: owned by uid {NOBODY}, not by us "
            "(uid 0): a runtime directory must be ours alone") in out.stderr
    assert os.listdir(rd) == []                 # nothing made in it


@pytest.mark.parametrize("kind", ["symlink", "group-writable"])
def test_a_runtime_dir_that_is_not_private_is_refused(tmp_path, kind):
    real = tmp_path / "elsewhere"
    real.mkdir()
    rd = tmp_path / "acl"
    if kind == "symlink":
        rd.symlink_to(real)
        why = "not a directory (a symlink?)"
    else:
        rd.mkdir()
        os.chmod(rd, 0o775)
        why = "writable by others (mode 0775)"
    out = _serve_example(str(tmp_path))
    assert out.returncode == 111, out.stderr
    assert f"cannot listen: {rd}: {why}" in out.stderr
    assert os.listdir(real) == []


@root_only
def test_sockets_are_born_with_their_mode_never_chmodded_by_path(tmp_path, monkeypatch):
    """A chmod or a symlink-following chown after bind is what the owner of
    the directory could redirect (the audit's race): none may happen."""
    cfg = policy_toml(tmp_path)
    text = cfg.read_text().replace('mode = "0666"', 'mode = "0640"\ngroup = "nogroup"')
    cfg.write_text(text)
    srv = Server(Engine(load_policy(cfg)), compiled=KERNEL == "compiled", log_fn=lambda m: None)
    calls = []
    real_chown = os.chown

    def no_chmod(path, *a, **kw):
        raise AssertionError(f"chmod by path: {path}")

    def chown(path, uid, gid, *, follow_symlinks=True, **kw):
        calls.append((path, follow_symlinks))
        return real_chown(path, uid, gid, follow_symlinks=follow_symlinks, **kw)

    monkeypatch.setattr(server_mod.os, "chmod", no_chmod)
    monkeypatch.setattr(server_mod.os, "chown", chown)
    old = os.umask(0o022)                     # would clear group/other write bits
    try:
        srv.bind()
        assert os.umask(0o022) == 0o022       # put back after each bind
    finally:
        os.umask(old)
    try:
        modes = {n: stat.S_IMODE(os.lstat(tmp_path / f"{n}.sock").st_mode)
                 for n in ("query", "policy", "admin")}
        assert modes == {"query": 0o640, "policy": 0o640, "admin": 0o666}
        assert sorted(calls) == [(str(tmp_path / "policy.sock"), False),
                                 (str(tmp_path / "query.sock"), False)]
    finally:
        for s in srv._sockets.values():
            s.close()
        for p in srv._made_paths:
            os.unlink(p)


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


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop privileges")
def test_socket_files_a_dropped_user_cannot_remove_are_named_on_stop(tmp_path):
    cfg = policy_toml(tmp_path, run='user = "nobody"\ngroup = "nogroup"')
    srv = start_server(tmp_path, cfg)
    try:
        assert srv.stop() == 0
        names = [f"{tmp_path}/{n}.sock (Permission denied)" for n in ("query", "policy", "admin")]
        assert f"acl serve: socket files not removed: {', '.join(names)}" in srv.text()
    finally:
        srv.stop()


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
