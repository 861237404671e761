"""acl against the real tcprules + tcprulescheck on generated rule files.

For every generated file:

* the real tcprules must accept it, and acl's cdb must be byte-identical;
* every query goes to tcprulescheck (the real lookup code of tcpserver) and
  to acl, through the layer built from the text *and* the layer built from
  the real cdb: same deciding key, same verdict, same environment.

tcprulescheck does no v4-mapped conversion (spec B.4), so the layers are
built with ``mapped_as_v4=False`` here; the conversion is checked live
against tcpserver in ``test_live.py``.  Default run: 200 files, 20,000
queries; ``ACL_SLOW=1`` adds 800 more files (80,000 queries), from seed
10,000 + ``ACL_SEED_BASE``.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from acl.cdb import make_cdb
from acl.compile.tcprules import layer_from_cdb, layer_from_text
from acl.model import Request, Verdict
from acl.parse.tcprules import parse_tcprules, rules_to_records
from tests.conftest import SLOW, SLOW_SEED_BASE

from .gen import Pools, random_query, random_rules
from .real import check_many, need_tools, parse_check, run_tcprules

pytestmark = need_tools

FILES = 200
QUERIES_PER_FILE = 100
CLI_FILES = 6
SLOW_FILES = range(10_000 + SLOW_SEED_BASE, 10_800 + SLOW_SEED_BASE)


def _acl_answer(layer, q):
    ip, host, info = q
    key, d = layer.explain(Request("t", ip, host=host, user=info))
    env = [f"{n}={v}".encode("utf-8", "surrogateescape") for n, v in d.env]
    return (None if key is None else key.encode("utf-8", "surrogateescape"),
            d.verdict is Verdict.DENY, env)


def _real_answer(out: bytes):
    key, deny, env = parse_check(out)
    return key, deny, ([] if deny else env)


def _generated(seed: int):
    r = random.Random(seed)
    pools = Pools(r)
    text, _n = random_rules(r, pools)
    queries = [random_query(r, pools) for _ in range(QUERIES_PER_FILE)]
    return text, queries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Each generated file with its real cdb and tcprulescheck answers."""
    d = tmp_path_factory.mktemp("tcprules-diff")
    items = []
    for seed in range(FILES):
        text, queries = _generated(seed)
        real = run_tcprules(text)
        assert real.status == "ok", (seed, text, real)
        path = d / f"r{seed}.cdb"
        path.write_bytes(real.cdb)
        (d / f"r{seed}.txt").write_bytes(text)
        answers = [_real_answer(o) for o in check_many(str(path), queries)]
        items.append((seed, text, real.cdb, queries, answers, d))
    return items


def test_cdb_is_byte_identical_to_tcprules(corpus):
    for seed, text, real_cdb, *_ in corpus:
        records = rules_to_records(parse_tcprules(text))
        ours = make_cdb((k, v) for k, v, _ in records)
        assert ours == real_cdb, f"seed {seed}: cdb differs for\n{text.decode()}"


def test_decisions_match_tcprulescheck(corpus, core):
    """On the compiled prefix core and on its pure twin."""
    total = disagreements = 0
    first = None
    for seed, text, real_cdb, queries, answers, _d in corpus:
        from_text = layer_from_text(text, f"r{seed}.txt", mapped_as_v4=False,
                                    prefix_table=core.PrefixTable)
        from_cdb = layer_from_cdb(real_cdb, f"r{seed}.cdb", mapped_as_v4=False,
                                  prefix_table=core.PrefixTable)
        for q, want in zip(queries, answers, strict=True):
            total += 1
            got_t, got_c = _acl_answer(from_text, q), _acl_answer(from_cdb, q)
            if got_t != want or got_c != want:
                disagreements += 1
                first = first or (seed, text, q, want, got_t, got_c)
    assert total >= 20_000
    assert disagreements == 0, f"{disagreements}/{total} disagree; first: {first}"


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="long differential run: set ACL_SLOW=1")
def test_many_more_files(tmp_path):
    total = 0
    for seed in SLOW_FILES:
        text, queries = _generated(seed)
        real = run_tcprules(text)
        assert real.status == "ok", (seed, text, real)
        records = rules_to_records(parse_tcprules(text))
        assert make_cdb((k, v) for k, v, _ in records) == real.cdb, seed
        path = tmp_path / "r.cdb"
        path.write_bytes(real.cdb)
        layer = layer_from_text(text, mapped_as_v4=False)
        for q, out in zip(queries, check_many(str(path), queries), strict=True):
            assert _acl_answer(layer, q) == _real_answer(out), (seed, text, q)
            total += 1
    assert total == len(SLOW_FILES) * QUERIES_PER_FILE


def test_answers_are_not_degenerate(corpus):
    """The generator really exercises every step of the probe order."""
    keys = [a[0] for *_x, answers, _d in corpus for a in answers]
    kinds = {
        "default": any(k is None for k in keys),
        "deny": any(a[1] for *_x, answers, _d in corpus for a in answers),
        "env": any(a[2] for *_x, answers, _d in corpus for a in answers),
        "info": any(k and b"@" in k for k in keys),
        "host": any(k and k.startswith(b"=") and len(k) > 1 and k[1:2] != b"." for k in keys),
        "domain": any(k and k.startswith(b"=.") for k in keys),
        "anyname": any(k == b"=" for k in keys),
        "empty": any(k == b"" for k in keys),
        "v4prefix": any(k and k.endswith(b".") and b":" not in k for k in keys),
        "v6prefix": any(k and k.endswith(b":") for k in keys),
        "mapped": any(k and k.startswith(b"::ffff:") for k in keys),
    }
    assert all(kinds.values()), kinds


def _cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "acl", *args], input=stdin,
                          capture_output=True, timeout=120)


def _batch_line(answer) -> bytes:
    key, deny, env = answer
    if deny:
        return b"deny"
    return b" ".join([b"allow", *env])


def test_cli_batch_and_compile_match_the_real_tools(corpus, tmp_path):
    """``acl match --tcprules F --batch`` on the text and on the real cdb,
    and ``acl compile``, on a subset of the corpus."""
    for seed, text, real_cdb, queries, answers, d in corpus[:CLI_FILES]:
        # pool names and users have no blanks, so every query fits one line
        simple = list(zip(queries, answers, strict=True))
        stdin = "".join(
            " ".join([ip] + ([f"host={h}"] if h is not None else [])
                     + ([f"info={i}"] if i is not None else [])) + "\n"
            for (ip, h, i), _a in simple).encode()
        want = b"".join(_batch_line(a) + b"\n" for _q, a in simple)
        for src in (d / f"r{seed}.txt", d / f"r{seed}.cdb"):
            out = _cli("match", "--tcprules", str(src), "-6", "--batch", stdin=stdin)
            assert out.returncode == 0, out.stderr
            assert out.stdout == want, f"seed {seed} via {src.name}"
        cdb, tmp = tmp_path / f"c{seed}.cdb", tmp_path / f"c{seed}.tmp"
        out = _cli("compile", str(cdb), str(tmp), stdin=text)
        assert out.returncode == 0 and out.stderr == b"", out.stderr
        assert cdb.read_bytes() == real_cdb
        assert not tmp.exists()
