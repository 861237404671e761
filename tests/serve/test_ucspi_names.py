"""Names a UCSPI server computed (DECIDE flag UCSPI, ``Request.ucspi_names``):
the tcprules layers use them as ``tcpserver -x`` would; hosts_access and
xinetd never take them for a verified name -- for those layers the request
is one without a name, and the sidecar's own lookups decide (acl/engine.py).

The sidecar here names 127.0.0.3 ``good.example.com`` (its hosts_file);
127.0.0.2 has no name it can verify.  The live comparison with the real
tcpserver is tests/wrap/test_live_ucspi_names.py.
"""

from __future__ import annotations

import pytest

from acl.engine import KERNEL, Engine
from acl.model import Request, Verdict
from acl.policy import load_policy
from acl.serve.conn import answer_frames
from acl.wire import binary as wb

RULES = """\
=good.example.com:allow,BY="host"
=.example.com:allow,BY="domain"
@127.0.0.5:allow,BY="empty info"
joe@127.0.0.6:allow,BY="info"
:deny
"""


def policy(tmp_path, *, lookup: bool = True):
    (tmp_path / "rules.txt").write_text(RULES)
    (tmp_path / "hosts.allow").write_text("guarded: good.example.com\n")
    (tmp_path / "hosts.deny").write_text("guarded: ALL\n")
    (tmp_path / "hosts").write_text("127.0.0.3 good.example.com\n")
    names = 'hosts_file = "hosts"' if lookup else "lookup = false"
    (tmp_path / "policy.toml").write_text(f"""\
[metrics]
listen = ""

[[source]]
type = "tcprules"
file = "rules.txt"
services = ["smtpd"]

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["guarded"]

[names]
{names}
""")
    return load_policy(tmp_path / "policy.toml")


def ask(engine, service, client, host=None, user=None, ucspi=True):
    return engine.decide(Request(service, client, 1234, "127.0.0.1", 25, host, user,
                                 ucspi_names=ucspi), 1.0)


def test_tcprules_use_the_ucspi_names_as_tcpserver(tmp_path):
    eng = Engine(policy(tmp_path))

    def by(client, host=None, user=None):
        d = ask(eng, "smtpd", client, host, user)
        return dict(d.env).get("BY") if d.verdict is Verdict.ALLOW else "DENY"

    assert by("127.0.0.2", "good.example.com") == "host"
    assert by("127.0.0.2", "x.example.com") == "domain"
    assert by("127.0.0.2", "x.other.org") == "DENY"
    assert by("127.0.0.2") == "DENY"
    # TCPREMOTEINFO set but empty (an ident ERROR reply) is an info: @ip
    assert by("127.0.0.5", None, "") == "empty info"
    assert by("127.0.0.5", None, None) == "DENY"
    assert by("127.0.0.6", "x.other.org", "joe") == "info"
    assert by("127.0.0.6", "x.other.org", "ann") == "DENY"


def test_hosts_access_does_not_trust_a_ucspi_name(tmp_path):
    eng = Engine(policy(tmp_path))
    # the UCSPI server says good.example.com: not a verified name, so the
    # sidecar asks for its own lookup, as for a request without a name ...
    assert eng.name_lookups(Request("guarded", "127.0.0.2", host="good.example.com",
                                    ucspi_names=True), 1.0) == [("verified", "127.0.0.2")]
    # ... and that decides (127.0.0.2: no name -> refused)
    assert ask(eng, "guarded", "127.0.0.2", "good.example.com").verdict is Verdict.DENY
    # 127.0.0.3 is good.example.com to the sidecar, whatever tcpserver says
    assert ask(eng, "guarded", "127.0.0.3", "evil.example.org").verdict is Verdict.ALLOW
    # a name sent without the flag is the caller's verified name (Postfix)
    assert ask(eng, "guarded", "127.0.0.2", "good.example.com",
               ucspi=False).verdict is Verdict.ALLOW
    assert eng.name_lookups(Request("guarded", "127.0.0.2", host="good.example.com"), 1.0) == []


def test_hosts_access_without_lookups_sees_no_name(tmp_path):
    eng = Engine(policy(tmp_path, lookup=False))
    assert ask(eng, "guarded", "127.0.0.3", "good.example.com").verdict is Verdict.DENY
    assert ask(eng, "smtpd", "127.0.0.3", "good.example.com").verdict is Verdict.ALLOW


@pytest.mark.skipif(KERNEL != "compiled", reason="the compiled engine is not built")
def test_the_batch_path_leaves_flagged_frames_to_python(tmp_path):
    """The compiled plan answers no frame with flags: a flagged DECIDE is
    decided by the Python path, with its names, exactly as alone."""
    pol = policy(tmp_path)
    fast, slow = Engine(pol), Engine(pol, batch=False)
    assert fast.plan is not None and "smtpd" in fast.plan.services
    reqs = [Request("smtpd", "127.0.0.2", 1, None, 0, "good.example.com", None, ucspi_names=True),
            Request("smtpd", "127.0.0.5", 1, None, 0, None, "", ucspi_names=True),
            Request("smtpd", "127.0.0.5", 1, None, 0, None, None, ucspi_names=True),
            Request("smtpd", "127.0.0.6", 1, None, 0, None, "joe", ucspi_names=True)]
    blob = b"".join(wb.encode_decide(i, r) for i, r in enumerate(reqs))

    def answer(engine):
        out, fatal, _ = answer_frames(engine, bytearray(blob), 1.0, set(), True)
        assert not fatal
        return [r.decision for r in wb.ReplyDecoder().feed(b"".join(out))]

    got = answer(fast)
    assert got == answer(slow)
    assert [dict(d.env).get("BY") for d in got] == ["host", "empty info", None, "info"]
    assert fast.plan.residual == len(reqs)
