"""deploy/prometheus and deploy/grafana against promtool, a real Prometheus and a live sidecar.

* ``promtool check config`` / ``check rules`` on the shipped files,
  ``promtool check metrics`` on the live sidecar's exposition, and
  ``promtool test rules`` (tests/deploy/acl-rules*.test.yml): each alert
  fires on a series made to trip it and stays quiet on one made not to.
* The live test.  Every ``acl_nfqueue_*`` series exists only while the
  NFQUEUE front door runs (the sidecar exports those families from the
  front door's counters), and ``acl_nfqueue_verdicts_total`` only once a
  packet was judged.  So, rather than excuse those names, the test runs the
  whole setup in a network namespace it makes (``unshare --net``, held open
  by a ``sleep`` it starts and kills by PID): a sidecar with an ``[nfqueue]``
  section, an iptables NFQUEUE rule for one loopback port, a TCP connection
  to that port, and the real Prometheus started with the shipped
  ``prometheus.yml`` (target rewritten to the sidecar's metrics port,
  intervals shortened to 1s).  Decisions, limit trips, evictions, leases,
  protocol errors and a failed reload are driven through the query and
  admin Unix sockets (paths reach across network namespaces).  Then every
  metric name the alert rules (as Prometheus loaded them) and the dashboard
  use must be among the series names Prometheus scraped, every rule must
  evaluate with health "ok", and every dashboard query must be accepted.
  The same run without ``[nfqueue]`` checks every other name, so a build
  without libnetfilter_queue (where the NFQUEUE case skips) still checks
  them.  Without root (no namespace) the live tests skip, never weaken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from acl.model import Request, Verdict
from tests.conftest import stop_process
from tests.doc_metrics import metrics_table

from .conftest import DEPLOY, GUIDE, acl_entry_point
from .netns import Netns
from .sidecar import Client, wait_for, write_policy

HERE = Path(__file__).resolve().parent
RULES = DEPLOY / "prometheus" / "acl-rules.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "acl-dashboard.json"

#: A metric name in a PromQL expression: ours all start with acl_; "up" is
#: the one Prometheus makes per target.
NAME = re.compile(r"\b(acl_[a-z0-9_]+|up)\b(?!\s*\()")

# Ports inside the test's own network namespace (still in the area's range).
METRICS_PORT, PROM_PORT, NFQ_PORT = 27301, 27302, 27303
QUEUE = 7

promtool_missing = shutil.which("promtool") is None


def names_in(exprs) -> set[str]:
    return {m for e in exprs for m in NAME.findall(e)}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return exprs


def documented_families() -> set[str]:
    return set(metrics_table())


def family_of(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@pytest.mark.skipif(promtool_missing, reason="promtool not installed")
def test_promtool_checks_config_and_rules(tmp_path):
    for f in (CONFIG, RULES):
        shutil.copy(f, tmp_path)
    out = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout
    out = subprocess.run(["promtool", "check", "rules", "acl-rules.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "10 rules found" in out.stdout


@pytest.mark.skipif(promtool_missing, reason="promtool not installed")
def test_config_says_what_the_metrics_default_is(tmp_path):
    """No [metrics] listen: no endpoint.  The comment must not promise one."""
    from acl.policy import load_policy

    (tmp_path / "hosts.allow").write_text("")
    (tmp_path / "hosts.deny").write_text("")
    (tmp_path / "policy.toml").write_text(
        '[sockets]\nquery = "q.sock"\n[[source]]\ntype = "hosts_access"\n'
        'allow = "hosts.allow"\ndeny = "hosts.deny"\n')
    assert load_policy(tmp_path / "policy.toml").metrics_listen == ""
    comment = " ".join(line.lstrip("# ") for line in CONFIG.read_text().splitlines()
                       if line.startswith("#"))
    assert "by default" not in comment
    assert "off unless set" in comment


def test_alerts_fire_when_they_should(tmp_path):
    shutil.copy(RULES, tmp_path)
    tests = ["acl-rules.test.yml", "acl-rules-surge.test.yml"]
    for t in tests:
        shutil.copy(HERE / t, tmp_path)
    out = subprocess.run(["promtool", "test", "rules", *tests], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 2, out.stdout
    # Every alert of the shipped file has a test.
    text = RULES.read_text()
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", text, re.M))
    tested = set()
    for t in tests:
        tested |= set(re.findall(r"alertname: (\w+)", (HERE / t).read_text()))
    assert len(alerts) == 10 and alerts == tested, alerts ^ tested


def alert_table_mismatches(rules: str, guide: str) -> list[str]:
    """docs/operator-guide.md's alert table (section 8) against the rules:
    the same alerts, each with its severity and its ``for:`` (none: none)."""
    shipped = {}
    for block in re.split(r"^\s*- alert: ", rules, flags=re.M)[1:]:
        name = block.split()[0]
        hold = re.search(r"^\s*for: (\d+)m$", block, re.M)
        severity = re.search(r"^\s*severity: (\w+)$", block, re.M).group(1)
        shipped[name] = (severity, hold.group(1) if hold else None)
    section = guide[guide.index("## 8. Alerts"):guide.index("## 9.")]
    documented = {}
    for name, severity, fires in re.findall(r"^\| \*\*(\w+)\*\* \((\w+)\) \| ([^|]*(?:\\\|[^|]*)*) \|",
                                            section, re.M):
        hold = re.search(r"\bfor (\d+) m\b", fires)
        documented[name] = (severity, hold.group(1) if hold else None)
    wrong = [f"{n}: shipped, not in the guide" for n in sorted(set(shipped) - set(documented))]
    wrong += [f"{n}: in the guide, not shipped" for n in sorted(set(documented) - set(shipped))]
    wrong += [f"{n}: shipped (severity, for minutes) {shipped[n]}, guide {documented[n]}"
              for n in sorted(set(shipped) & set(documented)) if shipped[n] != documented[n]]
    return wrong


def test_the_guide_s_alert_table_is_the_shipped_rules():
    guide = GUIDE.read_text()
    assert alert_table_mismatches(RULES.read_text(), guide) == []
    planted = guide.replace("| **AclSourcesEvicting** (warning) | evictions from the per-source "
                            "table for 10 m |", "| **AclSourcesEvicting** (critical) | evictions "
                            "from the per-source table for 5 m |")
    assert planted != guide
    assert alert_table_mismatches(RULES.read_text(), planted) == [
        "AclSourcesEvicting: shipped (severity, for minutes) ('warning', '10'), "
        "guide ('critical', '5')"]


def test_dashboard_names_are_the_documented_ones():
    used = {family_of(n) for n in names_in(dashboard_exprs())} - {"up"}
    documented = documented_families()
    assert len(documented) == 40
    assert used <= documented, used - documented
    # The dashboard shows every documented family somewhere.
    assert used == documented, documented - used
    # Every panel has a query and every query names one of ours.
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(names_in([t["expr"]]) for t in p["targets"]), p["title"]


# -- live -----------------------------------------------------------------------


def prom_api(ns: Netns, path: str, **params):
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    doc = json.loads(ns.fetch(url))
    assert doc["status"] == "success", doc
    return doc["data"]


def drive_traffic(work: Path, ns: Netns) -> None:
    """Make every non-NFQUEUE family grow a series, through the real front doors."""
    client = Client(work / "run" / "query.sock")
    try:
        # Decisions (allow and deny) and latency; a lease held open.
        # (127.0.0.1 already spent its one token on the NFQUEUE'd SYN.)
        replies = client.decide_many([Request("alpha", "127.0.0.2"), Request("alpha", "8.8.8.8"),
                                      Request("beta", "10.1.1.1", lease=True)])
        assert [r.decision.verdict for r in replies] == [Verdict.ALLOW, Verdict.DENY,
                                                         Verdict.ALLOW]
        # Rate limit trips: burst 1 per source, so a second request refuses.
        replies = client.decide_many([Request("beta", "10.9.9.9")] * 3)
        assert [r.decision.verdict for r in replies][1:] == [Verdict.DENY, Verdict.DENY]
        # Evictions: more distinct sources than the table holds (16 slots).
        client.decide_many([Request("beta", f"10.7.{i // 250}.{i % 250}") for i in range(200)])
        # A protocol error: a frame of an unknown version.
        bad = b"\x08\x00\x00\x00\x09\x03\x00\x00\x01\x00\x00\x00"
        client.send_raw(bad, 1)
    except BaseException:
        client.close()
        raise
    # Kept open (acl_clients_connected, acl_leases_active); the caller closes it.
    return client


@pytest.mark.live
@pytest.mark.root
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
@pytest.mark.parametrize("nfqueue", [False, True], ids=["unix-sockets", "with-nfqueue"])
def test_live_prometheus_scrapes_every_name(tmp_path, nfqueue):
    """Without [nfqueue]: every name but acl_nfqueue_*; with it: every name."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace, iptables and an NFQUEUE")
    from acl import nfq
    if nfqueue and not nfq.AVAILABLE:
        pytest.skip("acl built without libnetfilter_queue: no NFQUEUE front door")
    exe = acl_entry_point()
    work = tmp_path / "work"
    config = write_policy(work, METRICS_PORT, rate=1, burst=1, sources=16)
    if nfqueue:
        with open(config, "a") as f:
            f.write(f'\n[nfqueue]\nqueues = [{QUEUE}]\nports = {{ {NFQ_PORT} = "beta" }}\n')

    ns = Netns()
    procs: list[subprocess.Popen] = []
    client = None
    try:
        sidecar_log = open(tmp_path / "sidecar.log", "wb")
        sidecar = subprocess.Popen(ns.cmd(exe, "serve", "--config", str(config)),
                                   stdout=sidecar_log, stderr=subprocess.STDOUT)
        procs.append(sidecar)

        def metrics_up():
            return ns.fetch(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        try:
            first = wait_for(metrics_up, 20, step=0.3, proc=sidecar)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'sidecar.log').read_text()}") from None
        if nfqueue:
            assert "# TYPE acl_nfqueue_packets_total counter" in first, (
                "the policy has an [nfqueue] section but acl serve exports no acl_nfqueue_* "
                "families: acl serve did not start the NFQUEUE front door\n"
                + (tmp_path / "sidecar.log").read_text())
            # One judged packet: a SYN to a loopback port the rule queues.
            ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", str(NFQ_PORT),
                   "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass")
        # The first connection from 127.0.0.1 (judged by NFQUEUE when it runs).
        connect = (f"import socket; l = socket.create_server(('127.0.0.1', {NFQ_PORT})); "
                   f"c = socket.create_connection(('127.0.0.1', {NFQ_PORT}), timeout=5); "
                   "print('connected')")
        assert ns.run(sys.executable, "-c", connect).stdout.strip() == "connected"

        client = drive_traffic(work, ns)
        # A failed reload: break the policy file, SIGHUP, put it back.
        good = config.read_text()
        config.write_text(good + "\n[[source]]\ntype = \"nonsense\"\n")
        sidecar.send_signal(signal.SIGHUP)
        wait_for(lambda: re.search(r'^acl_reloads_total\{result="failure"\} [1-9]', ns.fetch(
            f"http://127.0.0.1:{METRICS_PORT}/metrics"), re.M), 10, step=0.3)
        config.write_text(good)

        # Prometheus's own lint of the exposition, now that the traffic has
        # made most families appear: naming (a counter's _total, units as
        # base units), HELP and TYPE on every family.  It prints each
        # problem and exits 1.
        if not promtool_missing:
            text = ns.fetch(f"http://127.0.0.1:{METRICS_PORT}/metrics")
            assert text.count("# TYPE acl_") >= 20, text
            lint = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True, timeout=30)
            assert lint.returncode == 0 and not lint.stdout.strip() and \
                not lint.stderr.strip(), lint

        # The real Prometheus with the shipped configuration.
        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        shutil.copy(RULES, prom_dir)
        shipped = CONFIG.read_text()
        assert "127.0.0.1:9464" in shipped and shipped.count("15s") == 3
        (prom_dir / "prometheus.yml").write_text(
            shipped.replace("127.0.0.1:9464", f"127.0.0.1:{METRICS_PORT}")
            .replace("15s", "1s").replace("scrape_timeout: 5s", "scrape_timeout: 1s"))
        prom = subprocess.Popen(
            ns.cmd("prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
                   f"--storage.tsdb.path={prom_dir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{PROM_PORT}"),
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
        procs.append(prom)

        def scraped():
            data = prom_api(ns, "query", query='up{job="acl"}')
            return data["result"] and data["result"][0]["value"][1] == "1"
        wait_for(scraped, 40, step=0.5, proc=prom)

        stored = set(prom_api(ns, "label/__name__/values"))
        # Wait until every rule has been evaluated once ("unknown" before).
        groups = wait_for(lambda: (g := prom_api(ns, "rules")["groups"])
                          and all(r["health"] != "unknown" for r in g[0]["rules"]) and g,
                          20, step=0.5)
        rules = groups[0]["rules"]
        assert sorted(r["name"] for r in rules) == [
            "AclLeasesUnkept", "AclLimitTripsSurging", "AclNamesUnanswered", "AclNfqueueDrops", "AclNfqueueFull",
            "AclNfqueueVerdictsRefused", "AclOutOfDescriptors", "AclReloadFailing", "AclSidecarDown",
            "AclSourcesEvicting"]
        for r in rules:
            assert r["health"] == "ok", r
        rule_names = names_in(r["query"] for r in rules)
        dash_names = names_in(dashboard_exprs())
        assert {"acl_nfqueue_queue_drops_total", "acl_sources_evictions_total"} <= rule_names
        used = rule_names | dash_names
        if not nfqueue:
            # acl_nfqueue_* come only from the NFQUEUE front door (the other case).
            used = {n for n in used if not n.startswith("acl_nfqueue_")}
        assert len(used) >= (16 if not nfqueue else 24)
        missing = used - stored
        assert not missing, f"used but not scraped: {sorted(missing)}"
        # Every dashboard query is valid PromQL and runs.
        base = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?"
        queries = [e.replace("$__rate_interval", "1m").replace("$instance", ".*")
                   for e in dashboard_exprs()]
        answers = ns.fetch_many([base + urllib.parse.urlencode({"query": q}) for q in queries])
        for q, answer in zip(queries, answers, strict=True):
            assert json.loads(answer)["status"] == "success", q
        # The traffic really landed in the series the alerts watch.
        trips = prom_api(ns, "query", query='acl_limit_trips_total{limit="rate"}')["result"]
        assert trips and float(trips[0]["value"][1]) >= 2
        failures = prom_api(ns, "query", query='acl_reloads_total{result="failure"}')["result"]
        assert failures and float(failures[0]["value"][1]) >= 1
        if nfqueue:
            verdicts = prom_api(ns, "query", query="acl_nfqueue_verdicts_total")["result"]
            assert any(r["metric"].get("service") == "beta" for r in verdicts)
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            stop_process(p)
        ns.close()
