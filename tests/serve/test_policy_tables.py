"""The policy file's tables as load_policy reads them: every known table
refuses an unknown key (a misspelt ``services`` or ``user`` must not leave a
default in force), ``[nfqueue]`` is checked at load (``--check``, start and
reload alike), a start that fails after binding leaves no socket file and
says 111, the services ``--check`` and ``dump`` report are the ones served,
and hosts_access applies to an xinetd NOLIBWRAP service whose server is
acl-wrap (the live form: tests/wrap/test_xinetd_same_file.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acl.engine import Engine
from acl.errors import PolicyError
from acl.model import Reason, Request, Verdict
from acl.policy import EXAMPLE, load_policy

from .conftest import policy_toml, start_server
from .test_server import admin

ACL = [sys.executable, "-m", "acl"]


def _files(d):
    (d / "hosts.allow").write_text("ALL: ALL\n")
    (d / "hosts.deny").write_text("")
    (d / "tcp.smtpd").write_text("203.0.113.:deny\n:allow\n")


BASE = """\
[sockets]
query = "query.sock"
[[source]]
type = "tcprules"
file = "tcp.smtpd"
services = ["smtpd"]
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
"""


@pytest.mark.parametrize("extra, message, pointed", [
    ("[run]\nusr = 'nobody'\n", "[run]: unknown key 'usr'", "usr ="),
    ("[sockets2]\n", "sockets2: unknown section", "[sockets2]"),
    ("[metrics]\nlisten = ''\nlsten = '127.0.0.1:1'\n", "[metrics]: unknown key 'lsten'",
     "lsten ="),
    ("[limits]\nrates = 5\n", "[limits]: unknown key 'rates'", "rates ="),
    ("[names]\nhosts = 'h'\n", "[names]: unknown key 'hosts'", "hosts ="),
    ("[run]\nwatch = false\nchroot_dir = '/'\n", "[run]: unknown key 'chroot_dir'",
     "chroot_dir ="),
    ("[nfqueue]\nports = { 22 = 'sshd' }\nqueue = 1\n", "[nfqueue]: unknown key 'queue'",
     "queue ="),
    ("[[source]]\ntype = 'tcprules'\nfile = 'tcp.smtpd'\nservice = ['smtpd']\n",
     "source[2] (tcprules): unknown key 'service'", "service ="),
    ("[[source]]\ntype = 'hosts_access'\nallow = 'hosts.allow'\ndeny = 'hosts.deny'\n"
     "file = 'x'\n", "source[2] (hosts_access): unknown key 'file'", "file ="),
    ("[[source]]\ntype = 'xinetd'\nfile = 'x'\nmapped_as_v4 = true\n",
     "source[2] (xinetd): unknown key 'mapped_as_v4'", "mapped_as_v4 ="),
    ("run = 3\n", "[run]: expected a table", "3"),
])
def test_unknown_keys_are_refused(tmp_path, extra, message, pointed):
    """Refused, and at the line and column of the key (a value of the wrong
    kind: of the value); tests/serve/test_policy_positions.py generates more."""
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    text = BASE + extra if extra.startswith("[") else extra + BASE  # top-level keys first
    p.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    at = re.match(rf"{re.escape(str(p))}:(\d+):(\d+): ", str(exc.value))
    assert at and message in str(exc.value), exc.value
    line = text.splitlines()[int(at[1]) - 1]
    assert line[int(at[2]) - 1:].startswith(pointed), (line, at[2])


def test_misspelt_services_fails_check_instead_of_binding_every_service(tmp_path):
    """The audit's case: ``service = [...]`` bound the tcprules source to
    every service (sshd refused by it), ``usr`` kept root; --check said 0."""
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE.replace('services = ["smtpd"]', 'service = ["smtpd"]'))
    out = subprocess.run([*ACL, "serve", "--config", str(p), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 100
    line = p.read_text().splitlines().index('service = ["smtpd"]') + 1
    assert f"fatal: {p}:{line}:1: source[0] (tcprules): unknown key 'service' (known: type, file, " \
           "services, mapped_as_v4)" in out.stderr


def test_every_shipped_policy_and_test_policy_still_loads(tmp_path):
    load_policy(EXAMPLE)
    load_policy(policy_toml(tmp_path))


BAD_NFQ = BASE + """\
[nfqueue]
queues = [0]
ports = { 22 = "sshd" }
reject = "rst"
"""


def test_bad_nfqueue_table_fails_check_and_start_with_100(tmp_path):
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BAD_NFQ)
    line = p.read_text().splitlines().index('reject = "rst"') + 1
    want = f"acl serve: fatal: {p}:{line}:10: [nfqueue]: reject must be one of drop, reset"
    for args in (["--check"], ["--metrics", ""]):
        out = subprocess.run([*ACL, "serve", "--config", str(p), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 100 and want in out.stderr, out
        assert not (tmp_path / "query.sock").exists()


def test_reload_with_a_bad_nfqueue_table_keeps_the_running_policy(tmp_path):
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE)
    eng = Engine(load_policy(p))
    running = eng.policy
    p.write_text(BAD_NFQ)
    with pytest.raises(PolicyError, match=r"\[nfqueue\]: reject"):
        eng.reload(p)
    assert eng.policy is running


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv")
                    or not shutil.which("unshare"),
                    reason="needs root, setpriv and unshare")
def test_queue_that_cannot_be_bound_exits_111_and_removes_the_sockets(tmp_path):
    """A runtime failure after binding (NFQUEUE needs CAP_NET_ADMIN, taken
    from the bounding set here; in a private network namespace, so no
    queue of the host is ever touched): exit 111, no socket file left."""
    pytest.importorskip("acl._nfq")
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE.replace('query = "query.sock"', 'query = "query.sock"\nadmin = "admin.sock"')
                 + '[nfqueue]\nqueues = [0]\nports = { 22 = "sshd" }\n')
    out = subprocess.run(["unshare", "-n", "setpriv", "--bounding-set=-net_admin",
                          "--inh-caps=-net_admin", *ACL, "serve", "--config", str(p),
                          "--metrics", ""],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 111, out
    assert "acl serve: fatal: " in out.stderr and "NFQUEUE 0" in out.stderr, out.stderr
    assert f"query on {tmp_path}/query.sock" in out.stderr     # it had bound ...
    assert not (tmp_path / "query.sock").exists()               # ... and cleaned up
    assert not (tmp_path / "admin.sock").exists()


XINETD_ONLY = """\
[sockets]
query = "query.sock"
admin = "admin.sock"
mode = "0666"
[[source]]
type = "xinetd"
file = "xinetd.conf"
"""


def test_xinetd_only_policy_reports_its_service_ids(tmp_path):
    policy_toml(tmp_path)                         # writes xinetd.conf (id echo-stream)
    p = tmp_path / "x.toml"
    p.write_text(XINETD_ONLY)
    out = subprocess.run([*ACL, "serve", "--config", str(p), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.endswith("1 sources, services echo-stream\n"), out
    eng = Engine(load_policy(p))
    assert eng.describe()["sources"][0]["services"] == ["echo-stream"]
    assert eng.decide(Request("sshd", "127.0.0.1"), 1.0).reason is Reason.UNKNOWN_SERVICE
    srv = start_server(tmp_path, p, args=("--metrics", ""))
    try:
        dump = admin(str(tmp_path / "admin.sock"), "dump")
        assert dump["policy"]["sources"][0]["services"] == ["echo-stream"]
    finally:
        srv.stop()


def _xinetd_policy(d, stanza_flags: str, server: str, extra: str = "") -> Engine:
    (d / "xinetd.conf").write_text(f"""\
service echo
{{
	type		= UNLISTED
	port		= 7
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	flags		= {stanza_flags}
	server		= {server}
	server_args	= /bin/cat
{extra}}}
""")
    (d / "hosts.allow").write_text("cat: 127.0.0.6: deny\n")
    (d / "hosts.deny").write_text("ALL: 127.0.0.5\n")
    p = d / "policy.toml"
    p.write_text('[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n'
                 '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\n'
                 'deny = "hosts.deny"\n')
    return Engine(load_policy(p))


def _answer(eng, client):
    d = eng.decide(Request("echo", client), 1.0)
    return d.verdict, d.reason


@pytest.fixture
def acl_wrap(tmp_path):
    w = tmp_path / "bin" / "acl-wrap"
    w.parent.mkdir()
    w.write_text("#!/bin/sh\n")
    w.chmod(0o755)
    return str(w)


def test_nolibwrap_acl_wrap_service_is_asked_under_the_wrapper_name(tmp_path, acl_wrap):
    """The guide's stanza: hosts.deny ``ALL: 127.0.0.5`` refuses 127.0.0.5,
    under the name acl-wrap asks with (ACL_WRAP_SERVICE=echo: the id, so
    hosts.allow's ``cat:`` line is not read)."""
    eng = _xinetd_policy(tmp_path, "NAMEINARGS NOLIBWRAP", acl_wrap,
                         "\tenv\t\t= ACL_WRAP_SERVICE=echo\n")
    assert _answer(eng, "127.0.0.5") == (Verdict.DENY, Reason.LIBWRAP)
    assert _answer(eng, "127.0.0.6") == (Verdict.ALLOW, Reason.OK)


def test_nolibwrap_acl_wrap_without_a_service_name_is_asked_as_the_server(tmp_path, acl_wrap):
    """No ACL_WRAP_SERVICE: acl-wrap in tcpd mode asks as ``cat``."""
    eng = _xinetd_policy(tmp_path, "NAMEINARGS NOLIBWRAP", acl_wrap)
    assert _answer(eng, "127.0.0.5") == (Verdict.DENY, Reason.LIBWRAP)
    assert _answer(eng, "127.0.0.6") == (Verdict.DENY, Reason.LIBWRAP)


def test_nolibwrap_with_another_server_still_skips_hosts_access(tmp_path):
    eng = _xinetd_policy(tmp_path, "NOLIBWRAP", "/bin/cat")
    assert _answer(eng, "127.0.0.5") == (Verdict.ALLOW, Reason.OK)


def test_libwrap_on_keeps_xinetds_own_daemon_name(tmp_path, acl_wrap):
    """Without NOLIBWRAP xinetd itself asks libwrap, as ``cat`` (the
    basename of the first server_args word with NAMEINARGS, spec C.10)."""
    eng = _xinetd_policy(tmp_path, "NAMEINARGS", acl_wrap, "\tenv\t\t= ACL_WRAP_SERVICE=echo\n")
    assert _answer(eng, "127.0.0.6") == (Verdict.DENY, Reason.LIBWRAP)


# -- floats TOML spells nan / inf ----------------------------------------------
@pytest.mark.parametrize("table, key, value, line, column", [
    ("limits", "burst", "nan", 12, 9),
    ("limits", "burst", "inf", 12, 9),
    ("limits", "rate", "nan", 12, 8),
    ("limits", "rate", "-inf", 12, 8),
    ("names", "ttl", "nan", 12, 7),
    ("names", "negative_ttl", "+inf", 12, 16),
])
def test_a_float_that_is_not_finite_is_refused_where_it_is_written(tmp_path, table, key, value,
                                                                   line, column):
    """``burst = nan`` passed --check (``nan < 0`` is False) and then refused
    every client, the compiled source table growing by one entry a request;
    ``rate = nan`` switched rate limiting off.  Now --check, a start and a
    reload refuse it, naming PATH:LINE:COLUMN and the key."""
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE + f"[{table}]\n{key} = {value}\n")
    want = f"{p}:{line}:{column}: {table}.{key}: expected a finite number, got {float(value)!r}"
    for args in (["--check"], ["--metrics", ""]):
        out = subprocess.run([*ACL, "serve", "--config", str(p), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 100 and f"acl serve: fatal: {want}" in out.stderr, out
        assert not (tmp_path / "query.sock").exists()
    p.write_text(BASE)
    eng = Engine(load_policy(p))
    running = eng.policy
    p.write_text(BASE + f"[{table}]\n{key} = {value}\n")
    with pytest.raises(PolicyError) as exc:
        eng.reload(p)
    assert str(exc.value) == want and eng.policy is running


def test_a_negative_rate_names_its_key(tmp_path):
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE + "[limits]\nrate = 5\nburst = -1\n")
    with pytest.raises(PolicyError, match=r"policy\.toml:13:9: limits\.burst: must be >= 0"):
        load_policy(p)


def test_one_source_entry_is_a_valid_size_with_an_xinetd_source(tmp_path):
    """``[limits] sources`` is documented 1 .. 67108864; with an xinetd
    source 1 failed (the xinetd table's least is one group of 2)."""
    p = policy_toml(tmp_path)
    p.write_text(p.read_text().replace("sources = 4096", "sources = 1"))
    pol = load_policy(p)
    assert pol.limits.sources == 1
    eng = Engine(pol)
    assert eng.decide(Request("echo-stream", "127.0.0.1"), 1000.0).allowed


# -- [nfqueue] on a build without the binding -----------------------------------
NFQ = BASE + '[nfqueue]\nqueues = [0]\nports = { 22 = "sshd" }\n'


def test_nfqueue_without_the_binding_is_refused_when_the_policy_loads(tmp_path, monkeypatch):
    """A pure install (or one built without libnetfilter_queue) passed
    --check with [nfqueue], bound its sockets, then exited 111 -- which
    systemd restarts forever.  The load refuses it; a reload keeps the
    running policy."""
    from acl import nfq

    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(BASE)
    eng = Engine(load_policy(p))
    running = eng.policy
    monkeypatch.setattr(nfq, "AVAILABLE", False)
    p.write_text(NFQ)
    with pytest.raises(PolicyError, match=r"\[nfqueue\]: this acl was built without the "
                                          r"NFQUEUE binding"):
        eng.reload(p)
    assert eng.policy is running
    monkeypatch.setattr(nfq, "AVAILABLE", True)
    if nfq.lib is not None:
        load_policy(p)                # with the binding: the same table loads


def test_nfqueue_in_a_pure_install_fails_check_and_start_with_100(tmp_path):
    """The same, as the pure install meets it: a copy of the package
    without its extensions, --check and a start exit 100 (systemd's
    RestartPreventExitStatus), before binding anything."""
    top = tmp_path / "pure"
    shutil.copytree(Path(__file__).resolve().parents[2] / "acl", top / "acl",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text(NFQ)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(top)
    for args in (["--check"], ["--allow-pure", "--metrics", ""]):
        out = subprocess.run([*ACL, "serve", "--config", str(p), *args], cwd=top,
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 100, out
        line = NFQ.splitlines().index("[nfqueue]") + 1
        assert f"acl serve: fatal: {p}:{line}:1: [nfqueue]: this acl was built without" \
            in out.stderr
        assert not (tmp_path / "query.sock").exists()
