"""Reloads and the xinetd limit state, through the engine and acl.policy, on
both limits twins: a failed or discarded reload changes no limit, each source
keeps its own state whatever its place, slots of gone services are freed
(never under a held lease), and the table is sized by ``[limits] sources``."""

from __future__ import annotations

import functools
import types

import pytest

from acl.engine import Engine
from acl.errors import PolicyError
from acl.model import Reason, Request, Verdict
from acl.policy import load_policy

NOW = 1e9
TOML = "[run]\nwatch = false\n[limits]\nsources = 1024\n"


def service(sid, *extra, port=23100):
    return "\n".join([f"service {sid}", "{", "  type = UNLISTED", f"  port = {port}",
                      "  socket_type = stream", "  protocol = tcp", "  wait = no",
                      "  user = root", "  server = /bin/cat", "  bind = 127.0.0.1",
                      "  flags = NOLIBWRAP IPv4", *("  " + e for e in extra), "}", ""])


def xsource(name):
    return f'[[source]]\ntype = "xinetd"\nfile = "{name}"\n'


@pytest.fixture
def make(limits, monkeypatch, tmp_path):
    """``make(toml, **files)``: write the files, an Engine on them (Python
    path) whose xinetd layers use the ``limits`` twin; ``make.dir``."""
    monkeypatch.setattr("acl.compile.xinetd._limits", limits)

    def write(toml=None, **files):
        for name, text in files.items():
            (tmp_path / name.replace("_", ".")).write_text(text)
        if toml is not None:
            (tmp_path / "policy.toml").write_text(toml)

    def build(toml, **files):
        write(toml, **files)
        return Engine(load_policy(tmp_path / "policy.toml"), batch=False)

    build.write = write
    build.dir = tmp_path
    return build


def ask(eng, sid, client, lease=True):
    d = eng.decide(Request(service=sid, client=client, lease=lease), NOW)
    return d.verdict, d.reason, d.lease


def test_a_failed_reload_changes_no_limit(make):
    eng = make(TOML + xsource("x.conf")
               + '[[source]]\ntype = "tcprules"\nfile = "rules.txt"\nservices = ["echo"]\n',
               x_conf=service("echo", "per_source = 1", "instances = 10"),
               rules_txt="127.:allow\n")
    assert ask(eng, "echo", "127.0.0.2")[0] is Verdict.ALLOW
    assert ask(eng, "echo", "127.0.0.2")[1] is Reason.PER_SOURCE_LIMIT
    # the new xinetd file would refuse everyone, but rules.txt is broken
    make.write(x_conf=service("echo", "per_source = 0", "instances = 0"),
               rules_txt="127.:bogus\n")
    with pytest.raises(Exception, match="rules.txt:1"):
        eng.reload()
    assert ask(eng, "echo", "127.0.0.3")[0] is Verdict.ALLOW
    # a reload prepared and never committed changes nothing either
    make.write(rules_txt="127.:allow\n")
    prepared = eng.prepare()
    assert ask(eng, "echo", "127.0.0.4")[0] is Verdict.ALLOW
    eng.commit(prepared)
    assert ask(eng, "echo", "127.0.0.5")[1] is Reason.SERVICE_LIMIT


def test_reordered_sources_keep_their_own_state(make):
    files = {"a_conf": service("a", "per_source = 1"),
             "b_conf": service("b", "per_source = 1", port=23101)}
    eng = make(TOML + xsource("a.conf") + xsource("b.conf"), **files)
    first = ask(eng, "a", "127.0.0.2")
    assert first[0] is Verdict.ALLOW
    states = {s.files[0].name: s.state for s in eng.policy.sources}
    make.write(TOML + xsource("c.conf") + xsource("b.conf") + xsource("a.conf"),
               c_conf=service("c", port=23102))
    eng.reload()
    after = {s.files[0].name: s.state for s in eng.policy.sources}
    assert after["a.conf"] is states["a.conf"] and after["b.conf"] is states["b.conf"]
    assert after["c.conf"] is not states["a.conf"] and after["c.conf"] is not states["b.conf"]
    assert ask(eng, "a", "127.0.0.2")[1] is Reason.PER_SOURCE_LIMIT
    assert ask(eng, "b", "127.0.0.2")[0] is Verdict.ALLOW
    assert eng.release(first[2])
    assert ask(eng, "a", "127.0.0.2")[0] is Verdict.ALLOW


def test_renamed_services_free_their_slots_but_not_under_a_lease(make):
    eng = make(TOML + xsource("x.conf"),
               x_conf="".join(service(f"old{i}", "instances = 1", port=23110 + i)
                              for i in range(3)))
    held = ask(eng, "old0", "127.0.0.2")
    state = eng.policy.sources[0].state
    make.write(x_conf="".join(service(f"new{i}", "instances = 1", port=23110 + i)
                              for i in range(3)))
    eng.reload()
    assert set(state.slots()) == {"old0", "new0", "new1", "new2"}
    assert ask(eng, "new0", "127.0.0.3")[0] is Verdict.ALLOW
    # the gone service's lease ends: no slot of the running services moves
    assert eng.release(held[2])
    assert ask(eng, "new0", "127.0.0.4")[1] is Reason.SERVICE_LIMIT
    make.write(x_conf="".join(service(f"new{i}", "instances = 1", port=23110 + i)
                              for i in range(4)))
    eng.reload()
    assert set(state.slots()) == {"new0", "new1", "new2", "new3"}
    assert state.active_leases(state.slots()["new3"]) == 0
    assert ask(eng, "new3", "127.0.0.2")[0] is Verdict.ALLOW
    assert ask(eng, "new0", "127.0.0.5")[1] is Reason.SERVICE_LIMIT


def test_renaming_more_than_half_the_cap_reloads(make, limits, monkeypatch):
    small = types.SimpleNamespace(**vars(limits))
    small.LimitState = functools.partial(limits.LimitState, max_services=4)
    monkeypatch.setattr("acl.compile.xinetd._limits", small)
    eng = make(TOML + xsource("x.conf"),
               x_conf="".join(service(f"a{i}", port=23110 + i) for i in range(3)))
    make.write(x_conf="".join(service(f"b{i}", port=23110 + i) for i in range(3)))
    with pytest.raises(PolicyError, match=r"x\.conf: too many xinetd services.* 4 at most"):
        eng.reload()                  # 3 running + 3 new: over the cap
    assert ask(eng, "a0", "127.0.0.2", lease=False)[0] is Verdict.ALLOW
    make.write(x_conf="".join(service(f"b{i}", port=23110 + i) for i in range(1)))
    eng.reload()
    make.write(x_conf="".join(service(f"c{i}", port=23110 + i) for i in range(3)))
    eng.reload()                      # b0 only was running: 1 + 3 fit
    assert ask(eng, "c2", "127.0.0.2")[0] is Verdict.ALLOW


def test_the_xinetd_table_is_sized_by_limits_sources(make):
    eng = make(TOML.replace("1024", "4096") + xsource("x.conf"), x_conf=service("s"))
    assert eng.policy.sources[0].state.capacity == 4096


def test_lease_overflows_are_exported(make):
    from prometheus_client import CollectorRegistry, generate_latest

    from acl.metrics import AclCollector

    eng = make(TOML.replace("1024", "2") + xsource("x.conf"), x_conf=service("s", "per_source = 1"))
    assert eng.policy.sources[0].state.capacity == 2
    for i in range(19):                 # 2 in the one group, 16 overflow, 1 refused
        ask(eng, "s", f"127.0.3.{i}")
    reg = CollectorRegistry()
    reg.register(AclCollector(eng))
    text = generate_latest(reg).decode()
    assert "acl_lease_overflow_entries 16.0" in text
    assert "acl_lease_overflows_total 16.0" in text
    assert "acl_lease_overflow_full_total 1.0" in text


def test_negative_max_load_loads_and_refuses_for_load(make):
    eng = make(TOML + xsource("x.conf"),
               x_conf=service("neg", "max_load = -1") + service("good", port=23101))
    assert ask(eng, "neg", "127.0.0.2")[1] is Reason.LOAD
    assert ask(eng, "good", "127.0.0.2")[0] is Verdict.ALLOW


def test_two_sources_cannot_read_one_xinetd_file(make, tmp_path):
    # Their limit state is handed over by file: they would share it.
    with pytest.raises(PolicyError, match=r"source\[1\]: .*x\.conf is read by source\[0\]"):
        make(TOML + xsource("x.conf") + xsource("./x.conf"), x_conf=service("a"))


# A lease follows its service id across files, as a running server does
# through xinetd's reconfiguration (reconfig.c matches services by id, not by
# the file they were read from): the service's new file counts it.

LIMITED = ("instances = 1", "per_source = 1")


def active(state, sid):
    return state.active_leases(state.slots()[sid]) if sid in state.slots() else 0


@pytest.mark.parametrize("new_name", ["b.conf", "a.conf.renamed"])
def test_a_lease_follows_its_service_to_another_file(make, new_name):
    eng = make(TOML + xsource("a.conf"), a_conf=service("echo", *LIMITED))
    held = ask(eng, "echo", "127.0.0.2")
    assert held[0] is Verdict.ALLOW
    old = eng.policy.sources[0].state
    make.write(TOML + xsource(new_name), **{new_name.replace(".", "_"): service("echo", *LIMITED)})
    eng.reload()
    new = eng.policy.sources[0].state
    assert new is not old
    assert (active(old, "echo"), active(new, "echo")) == (0, 1)
    assert ask(eng, "echo", "127.0.0.3")[1] is Reason.SERVICE_LIMIT
    assert eng.leases_active == 1 and eng.leases_by_service == {"echo": 1}
    assert eng.release(held[2]) and not eng.release(held[2])
    assert active(new, "echo") == 0
    assert ask(eng, "echo", "127.0.0.3")[0] is Verdict.ALLOW


def test_a_moved_lease_counts_per_source_in_its_new_file(make):
    eng = make(TOML + xsource("a.conf"), a_conf=service("echo", "per_source = 1"))
    held = ask(eng, "echo", "127.0.0.2")
    make.write(TOML + xsource("b.conf"), b_conf=service("echo", "per_source = 1"))
    eng.reload()
    assert ask(eng, "echo", "127.0.0.2")[1] is Reason.PER_SOURCE_LIMIT
    assert ask(eng, "echo", "127.0.0.3")[0] is Verdict.ALLOW
    assert eng.release(held[2])
    assert ask(eng, "echo", "127.0.0.2")[0] is Verdict.ALLOW


def test_a_lease_moved_away_and_back_is_counted_once(make):
    files = {"a_conf": service("echo", *LIMITED), "b_conf": service("other", port=23101)}
    eng = make(TOML + xsource("a.conf") + xsource("b.conf"), **files)
    held = ask(eng, "echo", "127.0.0.2")
    a, b = (s.state for s in eng.policy.sources)
    make.write(b_conf=service("other", port=23101) + service("echo", *LIMITED),
               a_conf=service("spare", port=23102))
    eng.reload()
    assert (active(a, "echo"), active(b, "echo")) == (0, 1)
    make.write(a_conf=service("echo", *LIMITED), b_conf=service("other", port=23101))
    eng.reload()
    assert (active(a, "echo"), active(b, "echo")) == (1, 0)
    assert ask(eng, "echo", "127.0.0.3")[1] is Reason.SERVICE_LIMIT
    assert eng.release(held[2])
    assert (active(a, "echo"), active(b, "echo")) == (0, 0)


def test_a_dropped_service_brought_back_in_another_file_counts_its_lease(make):
    eng = make(TOML + xsource("a.conf"), a_conf=service("echo", *LIMITED))
    held = ask(eng, "echo", "127.0.0.2")
    a = eng.policy.sources[0].state
    make.write(a_conf=service("other", port=23101))
    eng.reload()                          # echo dropped: its lease keeps its slot in a
    assert active(a, "echo") == 1
    make.write(TOML + xsource("a.conf") + xsource("b.conf"), b_conf=service("echo", *LIMITED))
    eng.reload()
    b = eng.policy.sources[1].state
    assert (active(a, "echo"), active(b, "echo")) == (0, 1)
    assert ask(eng, "echo", "127.0.0.3")[1] is Reason.SERVICE_LIMIT
    eng.reload()                          # the empty slot in a is freed now
    assert "echo" not in a.slots()
    assert eng.release(held[2])


def test_a_held_lease_keeps_no_old_layer_alive(make):
    import gc
    import weakref

    eng = make(TOML + xsource("a.conf"), a_conf=service("echo", *LIMITED))
    held = ask(eng, "echo", "127.0.0.2")
    first = weakref.ref(eng.policy.sources[0].layer)
    for _ in range(3):
        eng.reload()
    gc.collect()
    assert first() is None
    assert ask(eng, "echo", "127.0.0.3")[1] is Reason.SERVICE_LIMIT
    assert eng.release(held[2])


def test_a_lease_the_new_file_cannot_take_stays_and_leaves_nothing_behind(make, monkeypatch):
    """A lease the new file's layer refuses to take (ValueError: what a
    client its family cannot hold raises) stays counted where it was; once
    it ends and the service is dropped, no group of leases is left holding
    either file's layer."""
    from acl.compile.xinetd import XinetdLayer

    eng = make(TOML + xsource("a.conf"), a_conf=service("echo", *LIMITED))
    held = ask(eng, "echo", "127.0.0.2")
    a = eng.policy.sources[0].state

    def refuse(self, request, now):
        raise ValueError("refused by the test")

    monkeypatch.setattr(XinetdLayer, "take_lease", refuse)
    make.write(TOML + xsource("b.conf"), b_conf=service("echo", *LIMITED))
    eng.reload()
    b = eng.policy.sources[0].state
    assert (active(a, "echo"), active(b, "echo")) == (1, 0)
    assert len(eng._groups) == 1
    assert eng.release(held[2]) and active(a, "echo") == 0
    make.write(b_conf=service("other", port=23101))
    eng.reload()
    assert eng._groups == {}


def cps_answers(eng, at):
    """Three connections to ``echo`` (cps = 2 30): two at ``at``, then the
    caller reloads, then one a second later (see the test below)."""
    return [eng.decide(Request(service="echo", client="127.0.0.2"), t).reason
            for t in at]


@pytest.mark.parametrize("changed", ["x.conf", "x.conf, size, inode and mtime kept",
                                     "a file of its includedir", "a file added there",
                                     "rules.txt", "nothing"])
def test_the_cps_window_restarts_only_when_the_xinetd_file_changed(make, changed):
    """xinetd restarts a service's cps window when it reloads its
    configuration (tests/xinetd/test_live_limits.py); acl reloads when any of
    its files changes, and one xinetd never reads -- a tcprules file here, a
    hosts.deny fail2ban writes in life -- must not hand out a fresh window:
    two connections, a reload, a third a second later trips unless the
    xinetd configuration (its file or one it includes) was read again with
    a change -- one that kept the file's size, inode and mtime too."""
    import os

    toml = (TOML + xsource("x.conf")
            + '[[source]]\ntype = "tcprules"\nfile = "rules.txt"\nservices = ["other"]\n')
    xd = make.dir / "xinetd.d"
    xd.mkdir()
    (xd / "echo").write_text(service("echo", "cps = 2 30"))
    eng = make(toml, x_conf=f"includedir {xd}\n", rules_txt="127.:allow\n")
    assert cps_answers(eng, [NOW, NOW]) == [Reason.OK, Reason.OK]
    if changed == "x.conf":
        make.write(x_conf=f"includedir {xd}\n# edited\n")
    elif changed.startswith("x.conf,"):
        st = os.stat(xd / "echo")
        (xd / "echo").write_text(service("echo", "cps = 2 31"))      # same length
        os.utime(xd / "echo", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(xd / "echo")[1:] == st[1:], "not the same stamp"
    elif changed == "a file of its includedir":
        (xd / "echo").write_text(service("echo", "cps = 2 30") + "# edited\n")
    elif changed == "a file added there":
        (xd / "other").write_text(service("other", port=23101))
    elif changed == "rules.txt":
        make.write(rules_txt="127.:allow\n10.:deny\n")
    eng.reload()
    expected = Reason.CPS if changed in ("rules.txt", "nothing") else Reason.OK
    assert cps_answers(eng, [NOW + 1]) == [expected]
