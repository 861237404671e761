"""``acl compile`` and ``acl match --tcprules`` as a user meets them: the
transcripts, exit codes and files, beside the real tcprules where it has an
equivalent behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl.ucspi_addr import _ip6_text, ip6_fmt

from .real import TCPRULES, check_many_raw, need_tools, run_tcprules

RULES = b'1.2.3.4:allow,A="x y",B=/2/\n1.2.:deny\n::1:allow,V="v6"\n=h.example.com:deny\n'


def acl(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "acl", *args], input=stdin,
                          capture_output=True, timeout=60)


@pytest.fixture
def rules(tmp_path):
    p = tmp_path / "rules.txt"
    p.write_bytes(RULES)
    return p


def test_match_single_query_transcript(rules):
    out = acl("match", "--tcprules", str(rules), "1.2.3.4")
    assert out.returncode == 0
    assert out.stdout == (f"rule 1.2.3.4:  ({rules}:1)\nset environment variable A=x y\n"
                          "set environment variable B=2\nallow connection\n").encode()
    out = acl("match", "--tcprules", str(rules), "::ffff:1.2.9.9")
    assert (out.returncode, out.stdout) == (1, f"rule 1.2.:  ({rules}:2)\ndeny connection\n".encode())
    out = acl("match", "--tcprules", str(rules), "9.9.9.9", "host=h.example.com")
    assert out.returncode == 1
    out = acl("match", "--tcprules", str(rules), "-H", "9.9.9.9", "host=h.example.com")
    assert (out.returncode, out.stdout) == (0, b"default:\nallow connection\n")


def test_match_batch_transcript(rules):
    stdin = (b"1.2.3.4\n1.2.5.5 host=x\n\n::1 info=joe\n9.9.9.9\n"
             b"9.9.9.9 host=h.example.com\n::ffff:1.2.3.4\n")
    out = acl("match", "--tcprules", str(rules), "--batch", stdin=stdin)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"allow A=x y B=2\ndeny\nallow V=v6\nallow\ndeny\nallow A=x y B=2\n"
    # -6: the mapped client keeps its IPv6 text, so no IPv4 key matches
    out = acl("match", "--tcprules", str(rules), "--batch", "-6", stdin=b"::ffff:1.2.3.4\n")
    assert out.stdout == b"allow\n"


def test_match_batch_bad_query_keeps_lines_aligned(rules):
    out = acl("match", "--tcprules", str(rules), "--batch",
              stdin=b"1.2.3.4\nnot-an-ip\n1.2.0.1 colour=red\n1.2.0.1\n")
    assert out.returncode == 100
    assert out.stdout == b"allow A=x y B=2\nerror\nerror\ndeny\n"
    assert b"stdin:2" in out.stderr and b"stdin:3" in out.stderr
    # a query that cannot be read is enough for the status (not only a bad address)
    out = acl("match", "--tcprules", str(rules), "--batch", stdin=b"1.2.0.1 colour=red\n")
    assert (out.returncode, out.stdout) == (100, b"error\n")


def test_match_reads_cdb_and_reports_broken_files(tmp_path, rules):
    cdb = tmp_path / "r.cdb"
    assert acl("compile", str(cdb), str(tmp_path / "r.tmp"), stdin=RULES).returncode == 0
    out = acl("match", "--tcprules", str(cdb), "1.2.3.4")
    assert out.returncode == 0 and f"({cdb}[1.2.3.4]:0)".encode() in out.stdout
    cdb.write_bytes(cdb.read_bytes()[:2100])
    out = acl("match", "--tcprules", str(cdb), "1.2.3.4")
    assert out.returncode == 100 and b"acl match: fatal:" in out.stderr
    out = acl("match", "--tcprules", str(tmp_path / "missing"), "1.2.3.4")
    assert out.returncode == 111 and b"unable to read" in out.stderr


@need_tools
def test_match_truncated_cdb_without_cdb_name(tmp_path):
    """A cut tcprules cdb named without .cdb is still a broken cdb, as
    tcprulescheck says ("protocol error"), not a rules text with a bad line."""
    real = run_tcprules(b"127.0.0.2:allow\n:deny\n")
    assert real.status == "ok", real.stderr
    cut = tmp_path / "trunc_noext"
    cut.write_bytes(real.cdb[:2060])
    [(code, said)] = check_many_raw([str(cut)], "127.0.0.2")
    assert code == 111 and b"protocol error" in said
    out = acl("match", "--tcprules", str(cut), "127.0.0.2")
    assert out.returncode == 100
    assert out.stderr == (f"acl match: fatal: {cut}: hash table 5 (2 slots at 2075) lies "
                          "outside the 2060-byte file\n").encode()


def test_match_usage_errors(rules):
    assert acl("match", "--tcprules", str(rules)).returncode == 100
    assert acl("match", "--tcprules", str(rules), "--batch", "1.2.3.4").returncode == 100
    assert acl("match", "--tcprules", str(rules), "1.2.3.4", "bogus").returncode == 100


def test_compile_usage_and_temporary_failures(tmp_path):
    out = acl("compile", "only-one")
    assert out.returncode == 100 and out.stderr.startswith(b"acl compile: usage:")
    out = acl("compile", str(tmp_path / "r.cdb"), str(tmp_path / "no" / "dir" / "r.tmp"),
              stdin=RULES)
    assert out.returncode == 111
    assert out.stderr.startswith(b"acl compile: fatal: unable to create ")
    # the rename fails: the target is a non-empty directory
    target = tmp_path / "dir.cdb"
    target.mkdir()
    (target / "x").write_bytes(b"")
    out = acl("compile", str(target), str(tmp_path / "r.tmp"), stdin=RULES)
    assert out.returncode == 111 and b"unable to move" in out.stderr


@need_tools
def test_compile_behaves_like_tcprules_on_files(tmp_path):
    """Same result files, same exit codes, and a bad line leaves the old cdb
    (a temporary file left by an earlier run is truncated, not overwritten
    in place)."""
    for name, text, code in [("good", RULES, 0), ("bad", RULES + b"1.2.3.4:allow,X\n", 100),
                             ("empty", b"", 0), ("comments", b"#x\n\n", 0)]:
        outs = []
        for tool in ([TCPRULES], [sys.executable, "-m", "acl", "compile"]):
            cdb, tmp = tmp_path / f"{name}-{len(outs)}.cdb", tmp_path / f"{name}-{len(outs)}.tmp"
            cdb.write_bytes(b"previous")
            tmp.write_bytes(b"an older, longer temporary file" * 500)   # truncated first
            r = subprocess.run([*tool, str(cdb), str(tmp)], input=text, capture_output=True,
                               timeout=30)
            outs.append((r.returncode, cdb.read_bytes(), tmp.exists(), oct(os.stat(cdb).st_mode)))
        assert outs[0] == outs[1], name
        assert outs[0][0] == code


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([0, 0, 0, 1, 0xA, 0xFFFF, 0x1234]), min_size=8, max_size=8),
       st.sampled_from(["plain", "mapped", "compat"]))
def test_fast_ip6_text_equals_the_transcription(groups, shape):
    if shape == "mapped":
        groups[:6] = [0, 0, 0, 0, 0, 0xFFFF]
    elif shape == "compat":
        groups[:6] = [0] * 6
    packed = b"".join(g.to_bytes(2, "big") for g in groups)
    assert _ip6_text(packed) == ip6_fmt(packed)
