"""``acl match`` (hosts files) and ``acl check``: transcripts and exit codes."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl.compile.tcpw import HostsAccessLayer, HostView, Query
from acl.compile.tcpw_check import check, shadowed
from acl.parse.hosts_access import parse_hosts

from .tcpdmatch import build_shim
from .test_fuzz import rule_lines

ROOT = Path(__file__).resolve().parents[2]


def acl(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "acl", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def files(tmp_path, allow, deny):
    a, d = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    a.write_text(allow)
    d.write_text(deny)
    return str(a), str(d)


def test_match_transcript(tmp_path):
    a, d = files(tmp_path, "sshd: 10.0.0.: setenv X %a %h: banners /b/%h\n", "ALL: ALL\n")
    out = acl("match", "--hosts-allow", a, "--hosts-deny", d, "sshd", "root@10.0.0.7")
    assert out.returncode == 0, out.stderr
    # values printed as tcpdmatch prints them: setenv's %-expanded, banners' not
    assert out.stdout.splitlines() == [
        "client:   address  10.0.0.7", "client:   username root", "server:   process  sshd",
        f"matched:  {a} line 1", "option:   setenv X 10.0.0.7 10.0.0.7",
        "option:   banners /b/%h", "access:   granted"]
    out = acl("match", "--hosts-allow", a, "--hosts-deny", d, "ftpd", "10.0.0.7")
    assert out.returncode == 1 and f"matched:  {d} line 1" in out.stdout
    assert out.stdout.endswith("access:   denied\n")


def test_match_prints_option_bytes_as_tcpdmatch_does(tmp_path):
    """An option's value is printed as the file's bytes (tcpdmatch prints
    them as they are), whatever the locale's error handler."""
    if shutil.which("tcpdmatch") is None or shutil.which("gcc") is None:
        pytest.skip("tcpdmatch (Debian tcpd) or gcc not installed")
    (tmp_path / "hosts.allow").write_bytes(b"sshd: 198.51.100.7: setenv LAT1 caf\xe9\n")
    (tmp_path / "hosts.deny").write_bytes(b"")
    # the shim shows libwrap's matched:/option: lines (tests/tcpw/tcpdmatch.py)
    real = subprocess.run(["tcpdmatch", "-d", "sshd", "198.51.100.7"], cwd=tmp_path,
                          capture_output=True, timeout=60,
                          env=dict(os.environ, LD_PRELOAD=build_shim(tmp_path)))
    want = [ln for ln in real.stdout.splitlines() if ln.startswith(b"option:")]
    assert want == [b"option:   setenv LAT1 caf\xe9"], real.stdout
    out = subprocess.run([sys.executable, "-m", "acl", "match", "--hosts-allow", "hosts.allow",
                          "--hosts-deny", "hosts.deny", "sshd", "198.51.100.7"], cwd=tmp_path,
                         capture_output=True, timeout=60,
                         env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert out.returncode == 0, out.stderr
    assert [ln for ln in out.stdout.splitlines() if ln.startswith(b"option:")] == want


def test_match_names_through_a_private_hosts_file(tmp_path):
    a, d = files(tmp_path, "sshd: .example.com\n", "ALL: ALL\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 good.example.com\n10.0.0.9 1.2.3.4\n10.0.0.9 bad.example.com\n")
    common = ["match", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(hosts)]
    out = acl(*common, "sshd", "good.example.com")
    assert out.returncode == 0 and "client:   hostname good.example.com" in out.stdout
    out = acl(*common, "sshd", "bad.example.com")
    assert out.returncode == 1 and "client:   hostname paranoid" in out.stdout
    out = acl(*common, "sshd", "nosuch.example.com")
    assert out.returncode == 100 and "host not found" in out.stderr


def test_match_batch(tmp_path):
    a, d = files(tmp_path, "sshd: 10.0.0.\nftpd: ALL: twist /bin/echo no\n", "ALL: 10.\n")
    hosts = tmp_path / "hosts"      # names answered here: never DNS
    hosts.write_text("127.0.0.1 localhost\n")
    out = acl("match", "--hosts-allow", a, "--hosts-deny", d, "--batch", "--hosts-file", str(hosts),
              stdin="sshd 10.0.0.1\nsshd 10.1.0.1\nftpd 1.2.3.4\nx 11.0.0.1\nsshd 2001:db8::1\n"
                    "bad\n\nsshd nosuch.invalid.\nsshd 10.0.0.1 extra\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"granted {a}:1", f"denied {d}:1", f"delegated {a}:2", "granted -", "granted -",
        "error expected 'DAEMON CLIENT'", "error nosuch.invalid.: host not found",
        "error expected 'DAEMON CLIENT'"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdmatch") is None,
                    reason="tcpdmatch as root")
def test_match_judges_user_as_tcpdmatch_and_with_tcpd_as_tcpd(tmp_path):
    """``user nobody``: the real tcpdmatch, run as root, really switches
    users and reports the rule denied; Debian's tcpd does nothing with it
    (hosts_options(5), inverted dry-run test), which ``--tcpd`` shows."""
    a, d = files(tmp_path, "sshd: ALL: user nobody\n", "")
    real = subprocess.run(["tcpdmatch", "-d", "sshd", "10.0.0.2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert real.stdout.splitlines()[-1] == "access:   denied", real.stdout
    out = acl("match", "-q", "--hosts-allow", a, "--hosts-deny", d, "sshd", "10.0.0.2")
    assert (out.returncode, out.stdout.splitlines()[-1]) == (1, "access:   denied")
    out = acl("match", "-q", "--tcpd", "--hosts-allow", a, "--hosts-deny", d, "sshd", "10.0.0.2")
    assert (out.returncode, out.stdout.splitlines()[-1]) == (0, "access:   granted")


def test_match_when_hosts_deny_ends_in_an_error(tmp_path):
    """libwrap denies everyone a file that stops in an error has not
    matched (tcpdmatch: "access: denied" and no matched line); acl match
    says why instead of a default grant."""
    a, d = files(tmp_path, "sshd: 10.0.0.1\n", "ftpd: 10.9.9.9\n" + "a" * 3000)
    out = acl("match", "-q", "--hosts-allow", a, "--hosts-deny", d, "telnetd", "10.0.0.2")
    assert out.returncode == 1
    assert out.stdout.splitlines()[-2:] == [
        f"matched:  (none; {d}:2 ends in an error, so everyone else is denied)",
        "access:   denied"]


def test_match_usage_errors(tmp_path):
    a, d = files(tmp_path, "", "")
    assert acl("match", "--hosts-allow", a, "sshd").returncode == 100
    assert acl("match", "--hosts-allow", a, "--batch", "sshd", "1.2.3.4").returncode == 100
    assert acl("match", "--hosts-allow", a + "/x", "sshd", "1.2.3.4").returncode == 111


# The acl check runs here ask the name service nothing (--no-names): their
# addresses would go to the machine's real DNS.  The name checks are
# test_names_vs_tcpdchk.py's, in a namespace whose names the test answers.


def test_check_exit_codes(tmp_path):
    a, d = files(tmp_path, "sshd: 10.0.0.0/8\n", "ALL: ALL\n")
    out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
    assert (out.returncode, out.stdout) == (0, "")
    a, d = files(tmp_path, "sshd: 10.0.0.0/8\nsshd: 10.1.0.0/16\n", "ALL: ALL\n")
    out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
    assert out.returncode == 1
    assert out.stdout == (f"{a}:2: warning: rule can never match: every client it names is "
                          f"matched first by {a}:1\n")
    a, d = files(tmp_path, "sshd 10.0.0.1\n", "ALL: ALL")
    out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
    assert out.returncode == 100
    assert f'{a}:1:1: missing ":" separator: line ignored' in out.stdout
    assert f"{d}:1:9: missing newline at end of file" in out.stdout
    (tmp_path / "f").write_text("")
    out = acl("check", "--no-names", "--hosts-allow", str(tmp_path / "f" / "x"), "--hosts-deny", d)
    assert out.returncode == 111


def test_check_reports_hosts_allow_first_and_comment_continuations(tmp_path):
    """Findings come file by file as libwrap reads them, hosts.allow first
    (here its name sorts after hosts.deny's), and a comment ending in a
    backslash, which swallows the next line (libwrap joins lines before it
    sees the '#'), is a warning at its end."""
    (tmp_path / "z").mkdir()
    (tmp_path / "a").mkdir()
    a, d = str(tmp_path / "z" / "allow"), str(tmp_path / "a" / "deny")
    Path(a).write_text("# ssh from the lab \\\nsshd: 10.0.0.0/8\nsshd: 10.1.0.0/16\n")
    Path(d).write_text("ALL:ALL:deny:x\n")
    out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
    lines = out.stdout.splitlines()
    assert out.returncode == 100, out.stdout
    assert lines[0] == (f"{a}:1:20: warning: comment ends in a backslash: the next line is "
                        "part of the comment"), lines
    assert [ln.split(":", 1)[0] for ln in lines] == [a] * (len(lines) - 1) + [d], lines


def test_check_names_from_a_hosts_file(tmp_path):
    """``--hosts-file``: the name checks ask that file alone, so they can run
    here (no netgroup named: those are asked of the system).
    test_check_hosts_file_vs_tcpdchk.py compares them with tcpdchk's."""
    a, d = files(tmp_path, "sshd: good nosuch.example.com 10.0.0.1 10.0.0.9\nsshd@multi: ALL\n",
                 "ALL: @\n")       # an empty '@' is the lint's, not a netgroup to ask
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 good.example.com good\n10.0.0.5 multi\n10.0.0.6 multi\n")
    out = acl("check", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(hosts))
    assert (out.returncode, out.stderr) == (1, ""), out.stderr
    assert out.stdout.splitlines() == [
        f"{a}:1:7: warning: good: hostname alias of good.example.com (libwrap matches "
        "official names: write good.example.com)",
        f"{a}:1:12: warning: nosuch.example.com: host not found (no address: the pattern "
        "matches no host)",
        f"{a}:1:40: warning: 10.0.0.9: host address 10.0.0.9 has no name (address->name "
        "lookup failed)",
        f"{a}:2:6: warning: multi: server host has 2 addresses (consider naming one address "
        "instead)",
        f"{d}:1:6: warning: empty netgroup name"]
    out = acl("check", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(hosts),
              "--no-names")
    assert out.returncode == 100 and "not allowed with argument" in out.stderr, out.stderr


def test_check_asks_the_names_of_the_pattern_files_the_matcher_reads(tmp_path):
    """``/file`` patterns nest 8 deep at most (acl.parse.hosts_patterns:
    MAX_FILE_DEPTH; libwrap recurses until its stack gives out): the
    name checks ask the names of exactly the files a match would read."""
    chain = [tmp_path / f"f{k}" for k in range(1, 11)]
    for k, f in enumerate(chain):
        nxt = f" {chain[k + 1]}" if k + 1 < len(chain) else ""
        f.write_text(f"nx{k + 1}.invalid{nxt}\n")
    a, d = files(tmp_path, f"sshd: {chain[0]}\n", "")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    out = acl("check", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(hosts))
    asked = re.findall(r"nx(\d+)\.invalid: host not found", out.stdout)
    assert asked == [str(k) for k in range(1, 9)], out.stdout


def test_a_hosts_file_that_cannot_be_read_is_fatal(tmp_path):
    """acl check and acl match say the same of it; a FIFO fails at once
    instead of blocking the command (acl/rulefiles.py)."""
    a, d = files(tmp_path, "sshd: good\n", "ALL: ALL\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad, why in ((tmp_path / "none", "[Errno 2] No such file or directory"),
                     (fifo, "[Errno 22] a FIFO, not a regular file"),
                     (tmp_path, "[Errno 21] Is a directory")):
        out = acl("check", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(bad))
        assert (out.returncode, out.stdout) == (111, ""), out
        assert out.stderr == f"acl check: fatal: {why}: '{bad}'\n"
        out = acl("match", "--hosts-allow", a, "--hosts-deny", d, "--hosts-file", str(bad),
                  "sshd", "good")
        assert (out.returncode, out.stdout) == (111, ""), out
        assert out.stderr == f"acl match: fatal: {why}: '{bad}'\n"


def test_check_column_of_a_missing_option_name_is_on_the_line(tmp_path):
    """A rule ending in ":" lacks an option name where its LF or CR LF
    starts; the column points there, not past the end of the line."""
    for eol in ("\n", "\r\n"):
        a, d = files(tmp_path, "", "")
        Path(d).write_bytes(f"ALL: 1.2.3.4{eol}sshd: x:{eol}sshd: x: {eol}".encode())
        out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
        assert out.returncode == 100
        assert out.stdout.splitlines() == [
            f"{d}:2:9: missing option name (the connection is denied)",
            f"{d}:3:10: missing option name (the connection is denied)"], repr(eol)


def test_check_lint_and_overlaps(tmp_path):
    a, d = files(tmp_path, "sshd: 192.168.1 10.0.0.1/255.0.0.0 0.0.0.0/0\n  # x: y\n"
                           "ALL: 172.16.5.5: user nobody\n",
                 "ALL: 172.16.0.0/16\n")
    out = acl("check", "--no-names", "--hosts-allow", a, "--hosts-deny", d)
    text = out.stdout
    assert out.returncode == 1
    assert "192.168.1: not a full dotted quad" in text
    assert "10.0.0.1/255.0.0.0: the net has bits outside the mask" in text
    assert "0.0.0.0/0: bad net/mask pattern" in text
    assert "'#' starts a comment only in column 1" in text
    assert "option user: does nothing in Debian's tcpd" in text
    assert f"{d}:1: warning: overlap: clients in 172.16.5.5/32" in text


@settings(max_examples=60, deadline=None)
@given(rule_lines(), rule_lines(),
       st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=20),
       st.sampled_from(["sshd", "ftpd", "x"]))
def test_shadowed_rules_really_never_decide(allow, deny, addrs, daemon):
    lay = HostsAccessLayer(parse_hosts("/a", allow), parse_hosts("/d", deny))
    dead = {(d.path, d.line) for d in shadowed(lay)}
    assert all(d.severity for d in check(lay))
    clients = [str(ipaddress.IPv4Address(a)) for a in addrs] + ["10.0.0.1", "192.168.1.1", "::1"]
    for c in clients:
        def make(c=c):
            return Query(daemon, HostView(c, "unknown", None, 0), HostView("unknown", "unknown", None, 0),
                         server_sin=False)
        i = lay.first_match(c, daemon, make)
        if i is not None:
            assert (lay.rules[i].path, lay.rules[i].line) not in dead
