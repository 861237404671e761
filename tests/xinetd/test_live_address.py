"""Live differential: the real xinetd vs ``acl match --xinetd --batch``.

Generated configurations (tests/xinetd/gen.py) are loaded by a real xinetd
in the foreground on 127.0.0.1 / ::1; every service is probed from every
client source (bound to 127.x.y.z, or ::1) and what xinetd did -- ran the
server, accepted and closed, or had no socket because it dropped the
service -- must equal acl's answer for the same service and client.  Zero
disagreements.  ``ACL_XINETD_SEEDS`` (comma separated) replaces the seeds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from tests.conftest import PORTS
from tests.xinetd import gen
from tests.xinetd.live_support import HOSTS, Xinetd, probe, require_live

pytestmark = pytest.mark.live

SEEDS = [int(s) for s in os.environ.get("ACL_XINETD_SEEDS", "11,12").split(",")]
SERVICES_PER_CONFIG = 40


def _expected(answer: str) -> str:
    if answer == "allow ok":
        return "ok"
    if answer == "deny address":
        return "closed"
    if answer == "deny unknown_service":
        return "refused"
    return "?" + answer


@pytest.mark.parametrize("seed", SEEDS)
def test_address_decisions_match_real_xinetd(seed, tmp_path):
    require_live()
    lo, hi = PORTS["xinetd"]
    first_port = lo + 100 * (SEEDS.index(seed) % 4)
    assert first_port + SERVICES_PER_CONFIG <= lo + 400 <= hi
    rng = random.Random(seed)
    text, services = gen.config(rng, first_port, SERVICES_PER_CONFIG)
    xd = Xinetd(text, len(services))
    try:
        xd.start()
        queries, observed = [], []
        for svc in services:
            if svc["kind"] == "v6only":
                pairs = [("::1", "::1", "::1")]
            else:
                mapped = svc["kind"] == "mapped"
                pairs = [(c, "127.0.0.1", ("::ffff:" + c) if mapped else c)
                         for c in gen.CLIENTS]
            for src, dst, as_seen in pairs:
                observed.append(probe(svc["port"], src, dst))
                queries.append(f"{svc['id']} {as_seen}")
        hosts = tmp_path / "hosts"
        hosts.write_text(HOSTS)
        out = subprocess.run(
            [sys.executable, "-m", "acl", "match", "--xinetd", xd.conf, "--hosts", str(hosts),
             "--batch", "-q"],
            input="\n".join(queries) + "\n", capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        answers = out.stdout.splitlines()
        assert len(answers) == len(queries)
        disagreements = [
            (q, obs, ans) for q, obs, ans in zip(queries, observed, answers, strict=True)
            if obs != _expected(ans)
        ]
        # the generated input must exercise all three outcomes
        assert {"ok", "closed"} <= set(observed), observed
        if disagreements:
            conf_lines = text.splitlines()
            detail = "\n".join(f"{q}: xinetd {o}, acl {a}" for q, o, a in disagreements[:30])
            pytest.fail(f"{len(disagreements)} disagreements of {len(queries)}:\n{detail}\n"
                        f"--- config ---\n" + "\n".join(conf_lines) +
                        f"\n--- xinetd log ---\n{xd.log_text()[-4000:]}")
    finally:
        xd.stop()
