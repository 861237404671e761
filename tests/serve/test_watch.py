"""The file watcher never settles on a file it did not read.

A change made while a reload reads the files, or between that read and the
swap, must make another reload (acl/serve/server.py rules; acl/policy.py:
stamps are taken before a file is read).  The tests change the file at
those moments from inside the loader, so nothing here depends on timing:
without the rule the old verdict stays for ever (the wait below is only the
bound on "did it ever answer").
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import acl.compile.tcprules as tcprules
from acl.engine import KERNEL, Engine
from acl.model import Request, Verdict
from acl.policy import load_policy
from acl.serve.server import Server

WAIT = 20.0          # seconds the server may take to pick an edit up
CLIENT = "192.0.2.66"
OLD = f"{CLIENT}:deny\n:allow\n"
NEW = f"{CLIENT}:allow\n:allow\n# edited\n"


def write_policy(d: Path) -> Path:
    (d / "tcp.smtpd").write_text(OLD)
    toml = d / "policy.toml"
    toml.write_text('[sockets]\nquery = "query.sock"\n\n[[source]]\ntype = "tcprules"\n'
                    'file = "tcp.smtpd"\nservices = ["smtpd"]\n\n[run]\nwatch = true\n')
    old = time.time() - 60               # not "racy" (acl/policy.py): written long ago
    for f in (d / "tcp.smtpd", toml):
        os.utime(f, (old, old))
    return toml


def edit(d: Path) -> None:
    """What vi or sed -i does: a new file renamed over the old one."""
    (d / "tcp.tmp").write_text(NEW)
    old = time.time() - 30               # not racy either: one more reload, not two
    os.utime(d / "tcp.tmp", (old, old))
    os.replace(d / "tcp.tmp", d / "tcp.smtpd")


def verdict(engine_or_policy) -> Verdict:
    engine = engine_or_policy if isinstance(engine_or_policy, Engine) else Engine(engine_or_policy)
    return engine.decide(Request("smtpd", CLIENT), time.time()).verdict


def test_a_file_changed_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    toml = write_policy(tmp_path)
    real = tcprules.load_tcprules

    def read_then_edit(path, **kw):      # the writer finishes just after the read
        layer = real(path, **kw)
        edit(tmp_path)
        return layer

    monkeypatch.setattr(tcprules, "load_tcprules", read_then_edit)
    first = load_policy(toml)
    monkeypatch.setattr(tcprules, "load_tcprules", real)
    assert verdict(first) is Verdict.DENY            # what it read
    assert first.stamps[str(tmp_path / "tcp.smtpd")] != Engine.file_stamp(tmp_path / "tcp.smtpd")
    # a reload keeps unchanged layers; this one changed after its read
    assert verdict(load_policy(toml, previous=first)) is Verdict.ALLOW


def test_an_edit_between_the_read_and_the_swap_makes_another_reload(tmp_path):
    engine = Engine(load_policy(write_policy(tmp_path)))
    prepare = engine.prepare
    calls = []

    def prepare_then_edit(path):         # runs in the reload thread
        prepared = prepare(path)
        calls.append(path)
        if len(calls) == 1:
            edit(tmp_path)               # read already; the swap has not happened
        return prepared

    engine.prepare = prepare_then_edit
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)

    async def scenario():
        ready = asyncio.Event()
        serving = asyncio.ensure_future(server.serve(watch_interval=0.02, ready=ready.set))
        try:
            await asyncio.wait_for(ready.wait(), WAIT)
            await asyncio.sleep(0.1)          # some polls: nothing changed, nothing reloads
            assert calls == [] and verdict(engine) is Verdict.DENY
            first = await server.reload_now("test")
            assert first["ok"] and len(calls) == 1
            assert verdict(engine) is Verdict.DENY     # the policy read before the edit
            deadline = asyncio.get_running_loop().time() + WAIT
            while verdict(engine) is not Verdict.ALLOW:
                assert asyncio.get_running_loop().time() < deadline, \
                    "the edit made during the reload was never loaded"
                await asyncio.sleep(0.02)
            assert len(calls) == 2
            await asyncio.sleep(0.2)          # settled: no reload after the last read
            assert len(calls) == 2
        finally:
            server.stop()
            await asyncio.wait_for(serving, WAIT)

    asyncio.run(scenario())


def test_racy_and_future_stamps(tmp_path):
    """A file modified just before it was read is compared as "changed" once
    (a same-size rewrite in the same tick would not show); one modified long
    ago, or dated in the future, is compared by its stamp (else every poll
    would reload it)."""
    toml = write_policy(tmp_path)
    rules = tmp_path / "tcp.smtpd"
    assert load_policy(toml).stamps[str(rules)] == Engine.file_stamp(rules)
    rules.write_text(OLD)                            # just now
    assert load_policy(toml).stamps[str(rules)] != Engine.file_stamp(rules)
    future = time.time() + 3600
    os.utime(rules, (future, future))
    assert load_policy(toml).stamps[str(rules)] == Engine.file_stamp(rules)


XSVC = ("service {name}\n{{\n  type = UNLISTED\n  port = {port}\n  socket_type = stream\n"
        "  protocol = tcp\n  wait = no\n  user = root\n  server = /bin/true\n"
        "  only_from = {only}\n}}\n")


def _old(*paths: Path) -> None:
    old = time.time() - 60               # not racy: written long ago
    for p in paths:
        os.utime(p, (old, old))


def test_xinetd_files_read_through_includedir_and_include_are_watched(tmp_path):
    """A service in /etc/xinetd.d/NAME is watched as the top file is; so is
    the directory (a file added there reloads) and an ``include``d file."""
    d = tmp_path / "xd"
    d.mkdir()
    (d / "wsvc").write_text(XSVC.format(name="wsvc", port=24900, only="127.0.0.2"))
    (tmp_path / "more.conf").write_text(XSVC.format(name="isvc", port=24901, only="127.0.0.2"))
    (tmp_path / "xinetd.conf").write_text(f"defaults\n{{\n}}\nincludedir {d}\n"
                                          f"include {tmp_path / 'more.conf'}\n")
    toml = tmp_path / "policy.toml"
    toml.write_text('[sockets]\nquery = "query.sock"\n\n[[source]]\ntype = "xinetd"\n'
                    'file = "xinetd.conf"\n\n[run]\nwatch = true\n')
    _old(d / "wsvc", tmp_path / "more.conf", tmp_path / "xinetd.conf", toml, d)
    policy = load_policy(toml)
    for f in (d, d / "wsvc", tmp_path / "more.conf"):
        assert str(f) in policy.stamps and policy.stamps[str(f)] == Engine.file_stamp(f)
    engine = Engine(policy)
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)

    def ask(service):
        return engine.decide(Request(service, "127.0.0.3"), time.time()).verdict

    async def until(cond, what):
        deadline = asyncio.get_running_loop().time() + WAIT
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.02)

    async def scenario():
        ready = asyncio.Event()
        serving = asyncio.ensure_future(server.serve(watch_interval=0.02, ready=ready.set))
        try:
            await asyncio.wait_for(ready.wait(), WAIT)
            assert ask("wsvc") is Verdict.DENY and ask("isvc") is Verdict.DENY
            (d / "wsvc.tmp").write_text(XSVC.format(name="wsvc", port=24900, only="127.0.0.3"))
            os.replace(d / "wsvc.tmp", d / "wsvc")           # an edit in xinetd.d
            await until(lambda: ask("wsvc") is Verdict.ALLOW, "xinetd.d/wsvc edit not loaded")
            (d / "new").write_text(XSVC.format(name="nsvc", port=24902, only="127.0.0.3"))
            await until(lambda: "nsvc" in engine.policy.services(),
                        "file added to includedir not loaded")
            (tmp_path / "more.conf").write_text(
                XSVC.format(name="isvc", port=24901, only="127.0.0.3 "))
            await until(lambda: ask("isvc") is Verdict.ALLOW, "included file edit not loaded")
        finally:
            server.stop()
            await asyncio.wait_for(serving, WAIT)

    asyncio.run(scenario())
