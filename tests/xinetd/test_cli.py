"""``acl match --xinetd``: transcripts of the batch and single forms."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.xinetd.helpers import defaults, svc
from tests.xinetd.live_support import HOSTS


def acl(*args, stdin="", env=None):
    return subprocess.run([sys.executable, "-m", "acl", "match", *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env=None if env is None else {**os.environ, **env})


def write(tmp_path, text):
    conf = tmp_path / "xinetd.conf"
    conf.write_text(text)
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    return str(conf), str(hosts)


def test_batch_answers_address_decisions(tmp_path):
    conf, hosts = write(tmp_path, defaults("only_from = 127.0.0.2")
                        + svc("a") + svc("b", "no_access = .example.com", "only_from = 0.0.0.0",
                                         port=23901)
                        + svc("v6", "only_from = ::ffff:127.0.0.3", bind="::ffff:127.0.0.1",
                              flags="IPv6", port=23902)
                        + svc("gone", "only_from = 1,2", port=23903))
    out = acl("--xinetd", conf, "--hosts", hosts, "--batch",
              stdin="a 127.0.0.2\na 127.0.0.3\nb 127.0.0.3\nb 127.0.0.4\n"
                    "v6 ::ffff:127.0.0.3\nv6 127.0.0.3\nv6 ::ffff:127.0.0.2\n"
                    "gone 127.0.0.2\nnope 127.0.0.2\n# comment\n\na not-an-ip\na\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "allow ok", "deny address", "deny address", "allow ok",
        "allow ok", "allow ok", "deny address",
        "deny unknown_service", "deny unknown_service", "deny error", "deny error"]
    assert "xinetd.conf:" in out.stderr and "DISABLING SERVICE" in out.stderr
    assert "stdin:13: expected SERVICE IP" in out.stderr


def test_batch_does_not_consume_limits_unless_asked(tmp_path):
    conf, hosts = write(tmp_path, svc("c", "cps = 2 5", "instances = 0"))
    many = "c 127.0.0.2\n" * 6
    out = acl("--xinetd", conf, "--hosts", hosts, "--batch", "-q", stdin=many)
    assert out.stdout.splitlines() == ["allow ok"] * 6
    out = acl("--xinetd", conf, "--hosts", hosts, "--batch", "-q", "--limits",
              "--now", "1000.5", stdin=many)
    assert out.stdout.splitlines() == (["deny service_limit"] * 2
                                       + ["deny connections per second"] * 4)


def test_single_query_exit_codes_and_errors(tmp_path):
    conf, hosts = write(tmp_path, svc("a", "only_from = 127.0.0.2"))
    ok = acl("--xinetd", conf, "--hosts", hosts, "a", "127.0.0.2")
    assert (ok.returncode, ok.stdout) == (0, "allow ok\n")
    no = acl("--xinetd", conf, "--hosts", hosts, "a", "127.0.0.9")
    assert (no.returncode, no.stdout) == (1, "deny address\n")
    unknown = acl("--xinetd", conf, "--hosts", hosts, "nope", "127.0.0.2")
    assert (unknown.returncode, unknown.stdout) == (1, "deny unknown_service\n")
    bad = acl("--xinetd", conf, "a", "zzz")
    assert bad.returncode == 100 and "not an address" in bad.stderr
    missing = acl("--xinetd", str(tmp_path / "none.conf"), "a", "127.0.0.1")
    assert missing.returncode == 111 and "none.conf" in missing.stderr
    conf2, _ = write(tmp_path, defaults("cps = x 1") + svc("a"))
    fatal = acl("--xinetd", conf2, "a", "127.0.0.1")
    assert fatal.returncode == 100 and "xinetd.conf:3:" in fatal.stderr
    usage = acl("--xinetd", conf)
    assert usage.returncode == 100 and "usage" in usage.stderr


def test_max_load_as_xinetd_reads_it(tmp_path):
    # xinetd keeps max_load = -1 (every client refused for load) and reads
    # hex floats with sscanf: 0x10 is 16, 0x0.0001p0 is 1.5e-5
    conf, hosts = write(tmp_path, svc("neg", "max_load = -1")
                        + svc("hex", "max_load = 0x10", port=23901)
                        + svc("tiny", "max_load = 0x0.0001p0", port=23902))
    out = acl("--xinetd", conf, "--hosts", hosts, "--batch", "--limits",
              stdin="neg 127.0.0.2\nhex 127.0.0.2\ntiny 127.0.0.2\n")
    assert out.returncode == 0, out.stderr
    load = float(open("/proc/loadavg").read().split()[0])
    assert out.stdout.splitlines() == [
        "deny load", "deny load" if load >= 16 else "allow ok",
        "deny load" if load >= 2 ** -16 else "allow ok"]


def test_now_without_limits_is_a_usage_error(tmp_path):
    """The usage says ``[--limits [--now T]]`` and the address check reads no
    clock: a --now given without --limits would be dropped in silence, and
    whoever wrote it believes the limits were run at that time."""
    conf, hosts = write(tmp_path, svc("t", "access_times = 00:00-00:30"))
    for argv, stdin in ((["t", "127.0.0.2"], ""), (["--batch"], "t 127.0.0.2\n")):
        out = acl("--xinetd", conf, "--hosts", hosts, "--now", "1000", *argv, stdin=stdin)
        assert out.returncode == 100 and out.stdout == "", out
        assert "--now is for --limits" in out.stderr and "usage:" in out.stderr, out.stderr


@pytest.mark.parametrize("core", ["compiled", "pure"])
def test_now_the_limits_core_cannot_hold_is_a_usage_error(tmp_path, core):
    """--now nan/inf/1e19 reached the cores: the compiled one cast it to
    int64/time_t (undefined; localtime_r failed and the minute became 0, so
    access_times 00:00-00:30 allowed), the pure one raised, reported as
    "not an address".  Now both refuse it as a usage error, and a time in
    range still answers as xinetd would (TZ=UTC: 00:15 inside, 01:00 not)."""
    env = {"TZ": "UTC", "ACL_NO_EXTENSIONS": "1" if core == "pure" else "0"}
    conf, hosts = write(tmp_path, svc("t", "access_times = 00:00-00:30"))
    for bad in ("nan", "inf", "-inf", "1e19", "-1e19", "4294967297"):
        out = acl("--xinetd", conf, "--hosts", hosts, "--limits", "--now", bad, "t",
                  "127.0.0.2", env=env)
        assert out.returncode == 100, (bad, out)
        assert "argument --now:" in out.stderr and "usage:" in out.stderr, out.stderr
        assert "not an address" not in out.stderr and "Traceback" not in out.stderr
        out = acl("--xinetd", conf, "--hosts", hosts, "--limits", "--now", bad, "--batch",
                  stdin="t 127.0.0.2\n", env=env)
        assert out.returncode == 100 and out.stdout == "", (bad, out)
    day = 86400 * 20000
    for now, want in ((day + 15 * 60, "allow ok"), (day + 3600, "deny time")):
        out = acl("--xinetd", conf, "--hosts", hosts, "--limits", "--now", str(now), "t",
                  "127.0.0.2", env=env)
        assert out.stdout == want + "\n", (now, out)
