"""``acl match --hosts-file F`` and a sidecar with ``[names] hosts_file = F``
decide as the real tcpdmatch does on a machine whose /etc/hosts is F.

Each case is a generated hosts file, a generated hosts.allow/hosts.deny
pair and queries, run in one namespace of names_ns.py (a private network,
an /etc overlay with the test's netgroup file and ``netgroup: files``):

* tcpdmatch in a mount namespace of its own where F is bind-mounted over
  /etc/hosts and ``hosts: files`` / ``netgroup: files`` over
  nsswitch.conf, one process per query (tests/tcpw/tcpdmatch.py's way);
* acl -- ``acl match``'s own entry point (its printed output) and an
  Engine over a policy naming F in ``[names] hosts_file`` (the sidecar's
  decisions) -- in one Python process where /etc/hosts is a decoy naming
  the same hosts at other addresses: an acl that asked the system for host
  names instead of F would answer otherwise.  Netgroups come from NSS in
  both (the namespace's netgroup file): a hosts file names hosts, not
  netgroups.

The hosts files hold what this is about: addresses alone on a line (glibc
names them ``""``, which libwrap verifies: KNOWN, LOCAL), a name given
twice at one address (two getaddrinfo entries: tcpdmatch answers twice),
names with IPv4 and IPv6 lines, ``::ffff:a.b.c.d`` lines, mixed case.

Compared per query: tcpdmatch's answer blocks (``client:``, ``server:``,
``matched:``, ``option:`` and ``access:`` lines) and acl match's, as
multisets -- the count matters, the order does not: glibc sorts a
getaddrinfo answer for both families by RFC 3484 (the machine's routes
decide it), acl match answers in file order (docs/operator-guide.md).
Then, for each address tcpdmatch answered for a client given by name, the
Engine's decision for a client at that address: its verdict and rule.
The option lines show the expansions (``spawn ... %h %n %c %H %N %s``):
the empty name shows the address where libwrap shows it.

test_acl_match_with_the_system_resolver_answers_every_entry_as_tcpdmatch:
without ``--hosts-file``, acl match with the same file as its /etc/hosts
says what tcpdmatch says, answer for answer and in the same order.

``ACL_SLOW=1`` compares 400 cases (60 for the system resolver), from seeds
shifted by ``ACL_SEED_BASE``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SLOW, SLOW_SEED_BASE

from .names_ns import run_commands
from .names_ns import unavailable as ns_unavailable
from .tcpdmatch import MARK, NSSWITCH, build_shim, match_argv
from .tcpdmatch import unavailable as tcpd_unavailable

ROOT = Path(__file__).resolve().parents[2]
CASES = 400 if SLOW else 40
SYSTEM_CASES = 60 if SLOW else 8
FIRST_SEED = 700_000 + SLOW_SEED_BASE if SLOW else 700
QUERIES = 24

NAMES = [f"m{i}.hf.test" for i in range(6)] + ["M1.HF.Test", "solo", "Solo", "lan"]
V4 = [f"10.40.0.{i}" for i in range(1, 9)]
V6 = ["2001:db8:40::1", "2001:db8:40::2", "::ffff:10.40.0.7", "::ffff:10.40.0.8"]
#: the decoy /etc/hosts acl must not read: the same names elsewhere
DECOY = "127.0.0.1 localhost\n" + "".join(
    f"10.99.0.{i} {n}\n" for i, n in enumerate(NAMES, start=1))
NETGROUP = ("labgroup (m1.hf.test,,) (M2.hf.test,,)\nwild (,bob,)\nemptygroup\n"
            "nested labgroup (solo,,)\n")
HOST_TOKENS = [
    "KNOWN", "UNKNOWN", "LOCAL", "PARANOID", "ALL", "known", "local",
    *NAMES, "nx.hf.test", ".hf.test", ".HF.TEST", "*.hf.test", "m?.hf.test", "*",
    "@labgroup", "@wild", "@emptygroup", "@nested", "@nosuchgroup",
    *V4, "10.40.0.", "10.40.0.0/255.255.255.248", "[2001:db8:40::1]", "[2001:db8:40::]/64",
]
DAEMONS = ["sshd", "ftpd", "ALL", "sshd@KNOWN", "ALL@LOCAL", "ftpd@m3.hf.test", "sshd@10.40.0.3",
           "ALL@UNKNOWN"]
#: the last: a %n that expands to nothing (a name "" from an address alone on
#: a line) leaves a blank at the front, which libwrap trims after expanding
OPTIONS = ["allow", "deny", "spawn /bin/echo h=%h n=%n c=%c H=%H N=%N s=%s",
           "spawn %n /bin/echo %n"]


#: runs inside the namespace: acl match's entry point per query (with
#: ``--hosts-file _hosts``, or with the system resolver when argv[3] says
#: "system"), and the Engine's decision per address tcpdmatch answered for
_ACL = r"""
import io, json, os, sys
from acl.cli import match_tcpw
from acl.engine import Engine
from acl.model import Request
from acl.policy import load_policy

cases = json.load(open(sys.argv[1]))
names = [] if sys.argv[3:] == ["system"] else ["--hosts-file", "_hosts"]
out = []
for case in cases:
    os.chdir(case["dir"])
    answers = []
    for d, c in case["queries"]:
        buf = io.BytesIO()
        real, sys.stdout = sys.stdout, io.TextIOWrapper(buf)
        try:
            rc = match_tcpw.main(["--hosts-allow", "hosts.allow", "--hosts-deny", "hosts.deny",
                                  *names, "-q", d, c])
        finally:
            sys.stdout.flush()
            sys.stdout.detach()         # (buf stays open)
            sys.stdout = real
        answers.append([rc, buf.getvalue().decode("utf-8", "surrogateescape")])
    if not names:
        out.append({"match": answers})
        continue
    engine = Engine(load_policy("policy.toml"))
    decided = []
    for service, client, server in case["requests"]:
        dec = engine.decide(Request(service, client, server=server), 0.0)
        loc = dec.location
        decided.append([dec.verdict.name, None if loc is None else [loc.path, loc.line]])
    out.append({"match": answers, "engine": decided})
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""

POLICY = """\
[names]
hosts_file = "_hosts"

[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["*"]
"""


def hosts_text(r) -> str:
    lines: list[str] = []
    for _ in range(r.randint(5, 14)):
        k = r.random()
        if k < 0.05:
            lines.append(r.choice(["# a comment", "", "10.40.1 bad", "bad m5.hf.test"]))
            continue
        if k < 0.15 and lines:
            lines.append(r.choice(lines))       # the same line again: every entry twice
            continue
        addr = r.choice(V6 + ["::1"] if k < 0.35 else V4)
        if r.random() < 0.25:                   # an address alone: glibc names it ""
            lines.append(addr + r.choice(["", " ", "\t", " # no name"]))
            continue
        lines.append(addr + "\t" + " ".join(r.sample(NAMES, r.choice([1, 1, 2, 3]))))
    return "\n".join(lines) + "\n"


def rule(r) -> str:
    def plist(pick, n):
        toks = [r.choice(pick) for _ in range(n)]
        if r.random() < 0.2:
            toks += ["EXCEPT", r.choice(pick)]
        return " ".join(toks)

    line = f"{plist(DAEMONS, r.choice([1, 1, 2]))}: {plist(HOST_TOKENS, r.choice([1, 1, 2, 3]))}"
    if r.random() < 0.25:
        line += ": " + r.choice(OPTIONS)
    return line


def queries(r) -> list[tuple[str, str]]:
    out = []
    for _ in range(QUERIES):
        k = r.random()
        if k < 0.75:
            # "": the name of every address alone on a line (getaddrinfo finds them)
            client = r.choice([*NAMES, "nx.hf.test", ""])
        elif k < 0.9:
            client = r.choice(V4 + ["2001:db8:40::1"])
        elif k < 0.95:
            # tcpdmatch compares "unknown" in any case (strcasecmp)
            client = r.choice(["unknown", "paranoid", "UNKNOWN", "Paranoid"])
        else:
            client = r.choice(["UNKNOWN@", "Unknown@", "@", "joe@"]) + r.choice(NAMES + V4)
        daemon = r.choice(["sshd", "ftpd", "sshd", "ftpd", "sshd@10.40.0.3",
                           f"ftpd@{r.choice([*NAMES, ''])}", "Unknown"])
        out.append((daemon, client))
    return out


# -- reading both programs' answers -----------------------------------------

_KEEP = ("client:", "server:", "matched:", "option:", "access:")


def blocks(text: str) -> list[tuple[str, ...]]:
    """One tuple of kept lines per answer (tcpdmatch separates them with an
    empty line); warnings and errors left out, and the blank tcpdmatch
    leaves after an option without a value (``option:   deny ``)."""
    out = []
    for chunk in text.split("\n\n"):
        kept = tuple(ln.rstrip() for ln in chunk.split("\n") if ln.startswith(_KEEP))
        if any(ln.startswith("access:") for ln in kept):
            out.append(kept)
    return out


def _field(block: tuple[str, ...], label: str) -> str | None:
    for ln in block:
        if ln.startswith(label):
            return ln[len(label):].strip()
    return None


def _where(block: tuple[str, ...]):
    """The rule of a tcpdmatch answer as (file, line), or None."""
    m = re.match(r"(\S+) line (\d+)$", _field(block, "matched:") or "")
    return None if m is None else (m.group(1), int(m.group(2)))


def _engine_requests(query: tuple[str, str], answers: list[tuple[str, ...]]) -> list[list]:
    """(service, client address, server address) for each tcpdmatch answer
    to a client given by name: tcpdmatch looked its name up, as the
    sidecar does for a client at that address (a client given as a number
    is only an address to tcpdmatch: no name, never looked up)."""
    if query[1] not in NAMES:
        return []
    daemon = query[0].split("@", 1)[0]
    out = []
    for b in answers:
        client = _field(b, "client:   address")
        if client is not None:
            out.append([daemon, client, _field(b, "server:   address")])
    return out


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    why = tcpd_unavailable() or ns_unavailable()
    if why:
        pytest.skip(why)
    return build_shim(tmp_path_factory.mktemp("shim"))


def _tcpdmatch_command(work: Path, shim: str) -> dict:
    (work / "_nss").write_text(NSSWITCH)
    return {"argv": match_argv(work, shim), "env": dict(os.environ), "timeout": 120}


def _acl_command(tmp_path: Path, cases: list[dict]) -> dict:
    (tmp_path / "_acl_cases.json").write_text(json.dumps(cases))
    return {"argv": [sys.executable, "-c", _ACL, str(tmp_path / "_acl_cases.json"),
                     str(tmp_path / "_acl_answers.json")],
            "env": dict(os.environ, PYTHONPATH=str(ROOT)), "timeout": 60 + 2 * CASES}


def test_acl_match_and_the_sidecar_with_a_hosts_file_decide_as_tcpdmatch(tmp_path, shim):
    cases = []
    for seed in range(FIRST_SEED, FIRST_SEED + CASES):
        r = random.Random(seed)
        work = tmp_path / f"c{seed}"
        work.mkdir()
        (work / "_hosts").write_text(hosts_text(r))
        (work / "hosts.allow").write_text("".join(rule(r) + "\n" for _ in range(r.randint(2, 8))))
        (work / "hosts.deny").write_text("".join(rule(r) + "\n" for _ in range(r.randint(0, 3)))
                                         + "ALL: ALL\n")
        (work / "policy.toml").write_text(POLICY)
        qs = queries(r)
        (work / "_queries").write_text("".join(f"{d} {c}\n" for d, c in qs))
        cases.append((seed, work, qs))
    # tcpdmatch first: the Engine is asked about the addresses it answered for
    real_runs = run_commands(tmp_path, hosts=DECOY, dns={}, netgroup=NETGROUP,
                             commands=[_tcpdmatch_command(w, shim) for _, w, _ in cases],
                             timeout=120 + 3 * CASES)
    real = []
    for (seed, _, qs), run in zip(cases, real_runs, strict=True):
        assert run["rc"] == 0, run
        texts = run["stdout"].split(MARK + "\n")[1:]
        assert len(texts) == len(qs), (seed, run["stdout"][:2000])
        real.append([blocks(t) for t in texts])
    asks = [{"dir": str(w), "queries": qs,
             "requests": [req for q, ans in zip(qs, answers, strict=True)
                          for req in _engine_requests(q, ans)]}
            for (_, w, qs), answers in zip(cases, real, strict=True)]
    [ours_run] = run_commands(tmp_path, hosts=DECOY, dns={}, netgroup=NETGROUP,
                              commands=[_acl_command(tmp_path, asks)], timeout=120 + 3 * CASES)
    assert ours_run["rc"] == 0, ours_run["stdout"][-3000:]
    ours = json.loads((tmp_path / "_acl_answers.json").read_text())
    bad = []
    seen = Counter()
    for (seed, work, qs), answers, mine, ask in zip(cases, real, ours, asks, strict=True):
        hosts = (work / "_hosts").read_text()
        for (d, c), want, (rc, text) in zip(qs, answers, mine["match"], strict=True):
            got = blocks(text)
            # acl match's own exit status: 1 when any address is denied
            verdicts = {_field(b, "access:") for b in want}
            want_rc = 100 if not want else 1 if "denied" in verdicts else 0
            if Counter(got) != Counter(want) or rc != want_rc:
                bad.append(f"seed {seed}: acl match {d} {c} (rc {rc}, not {want_rc}):\n"
                           f"{text}\n--- tcpdmatch:\n{want}\n--- hosts:\n{hosts}")
            names = [_field(b, "client:   hostname") for b in want]
            seen["empty name"] += names.count("")
            seen["twice"] += len(want) - len(set(want))
            seen["netgroup"] += sum(1 for b in want if (w := _where(b)) is not None
                                    and re.search(r"[\s:]@\w", _rule_text(work, w)))
            seen["answers"] += len(want)
        want_engine = [(b, q) for q, ans in zip(qs, answers, strict=True) for b in ans
                       if q[1] in NAMES and _field(b, "client:   address") is not None]
        assert len(want_engine) == len(mine["engine"]) == len(ask["requests"])
        seen["sidecar"] += len(want_engine)
        for (b, q), (verdict, loc) in zip(want_engine, mine["engine"], strict=True):
            word = {"ALLOW": "granted", "DENY": "denied", "DELEGATE": "delegated"}[verdict]
            where = None if loc is None else (os.path.basename(loc[0]), loc[1])
            if word != _field(b, "access:") or where != _where(b):
                bad.append(f"seed {seed}: sidecar {q}: {word} {where} != tcpdmatch {b}\n"
                           f"--- hosts:\n{hosts}")
    assert not bad, f"{len(bad)} disagreements; first:\n" + "\n\n".join(bad[:5])
    # the cases reach what they are about
    assert seen["answers"] >= 20 * CASES and seen["sidecar"] >= 12 * CASES, seen
    assert min(seen["empty name"], seen["twice"], seen["netgroup"]) >= CASES, seen


def test_acl_match_with_the_system_resolver_answers_every_entry_as_tcpdmatch(tmp_path, shim):
    """Without ``--hosts-file`` acl match asks the C library as tcpdmatch
    does: on a machine whose /etc/hosts is the generated file, every
    getaddrinfo entry is answered, twice for an address two lines give,
    in the same order (the same glibc sorts both)."""
    commands, cases = [], []
    for seed in range(FIRST_SEED, FIRST_SEED + SYSTEM_CASES):
        r = random.Random(seed)
        work = tmp_path / f"s{seed}"
        work.mkdir()
        (work / "_hosts").write_text(hosts_text(r))
        (work / "hosts.allow").write_text("".join(rule(r) + "\n" for _ in range(r.randint(2, 8))))
        (work / "hosts.deny").write_text("ALL: ALL\n")
        qs = queries(r)
        (work / "_queries").write_text("".join(f"{d} {c}\n" for d, c in qs))
        (work / "_cases.json").write_text(json.dumps([{"dir": str(work), "queries": qs}]))
        acl = [sys.executable, "-c", _ACL, str(work / "_cases.json"), str(work / "_ours.json"),
               "system"]
        commands += [_tcpdmatch_command(work, shim),
                     {"argv": ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               'mount --bind "$1" /etc/hosts && mount --bind "$2" '
                               '/etc/nsswitch.conf && shift 2 && exec "$@"', "sh",
                               str(work / "_hosts"), str(work / "_nss"), *acl],
                      "env": dict(os.environ, PYTHONPATH=str(ROOT)), "timeout": 120}]
        cases.append((seed, work, qs))
    runs = run_commands(tmp_path, hosts=DECOY, dns={}, netgroup=NETGROUP, commands=commands)
    bad, twice = [], 0
    for i, (seed, work, qs) in enumerate(cases):
        real, ours = runs[2 * i], runs[2 * i + 1]
        assert real["rc"] == 0 and ours["rc"] == 0, (real, ours)
        texts = real["stdout"].split(MARK + "\n")[1:]
        [mine] = json.loads((work / "_ours.json").read_text())
        for (d, c), text, (rc, got) in zip(qs, texts, mine["match"], strict=True):
            want = blocks(text)
            twice += len(want) - len(set(want))
            if blocks(got) != want:
                bad.append(f"seed {seed}: acl match {d} {c} (rc {rc}):\n{got}\n"
                           f"--- tcpdmatch:\n{text}\n--- hosts:\n{(work / '_hosts').read_text()}")
    assert not bad, f"{len(bad)} disagreements; first:\n" + "\n\n".join(bad[:5])
    assert twice >= SYSTEM_CASES, twice


def _rule_text(work: Path, where: tuple[str, int]) -> str:
    return (work / where[0]).read_text().split("\n")[where[1] - 1]
