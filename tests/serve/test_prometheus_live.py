"""A real Prometheus (Debian's) scrapes ``acl serve``'s metrics endpoint and
its HTTP query API returns the decision counters; the exported names are
exactly those of docs/metrics.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from acl.client import Client
from acl.wire import binary as wb
from tests.conftest import stop_process

from .conftest import policy_toml, start_server, wait_for

pytestmark = pytest.mark.live
METRICS_PORT = 24301
PROM_PORT = 24302
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def documented_names() -> dict[str, str]:
    names = {}
    for m in re.finditer(r"^\| `(acl_[a-z_]+)` \| ([a-z ()]+?) \|", DOCS.read_text(), re.M):
        names[m.group(1)] = m.group(2)
    return names


@pytest.fixture
def metrics_server(tmp_path):
    srv = start_server(tmp_path, policy_toml(tmp_path, metrics=f"127.0.0.1:{METRICS_PORT}"))
    try:
        yield srv
    finally:
        srv.stop()


def test_scrape_has_every_documented_name_and_type(metrics_server):
    with Client(metrics_server.query) as c:
        c.decide("sshd", "192.0.2.1")
        c.decide("sshd", "203.0.113.1")
        c.decide("echo-stream", "127.0.0.3", lease=True)
        c.decide("echo-stream", "127.0.0.4", lease=True)
        c.decide("echo-stream", "127.0.0.4", lease=True)
        assert not c.decide("echo-stream", "127.0.0.4", lease=True).allowed    # a limit trip
        from .conftest import connect, read_replies

        with connect(metrics_server.query) as bad:
            bad.sendall(wb.frame(0x42, 9))                                    # a protocol error
            read_replies(bad, 1)
        text = _get(f"http://127.0.0.1:{METRICS_PORT}/metrics").decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    doc = documented_names()
    assert len(doc) >= 19
    ours = {n: t for n, t in doc.items() if not n.startswith("acl_nfqueue_")}
    for name, kind in ours.items():
        # text format 0.0.4: counters are typed under their _total name, an
        # info metric is a gauge with value 1
        want = "gauge" if "info" in kind else kind.split()[0]
        got = types.get(name) or types.get(name.removesuffix("_total"))
        assert got == want, (name, got)
        assert re.search(rf"^{name}(_bucket)?[{{ ]", text, re.M), name
    assert 'acl_decisions_total{reason="ok",service="sshd",verdict="allow"} 1.0' in text
    assert 'acl_decisions_total{reason="libwrap",service="sshd",verdict="deny"} 1.0' in text
    assert 'acl_leases_active{service="echo-stream"} 3.0' in text
    assert 'acl_limit_trips_total{limit="instances",service="echo-stream"} 1.0' in text
    assert 'acl_protocol_errors_total{code="2",protocol="binary"} 1.0' in text
    assert 'acl_core_info{implementation="compiled"' in text
    assert re.search(r'acl_policy_rules\{family="ipv4",source="hosts_access"\} [1-9]', text)
    assert 'acl_clients_connected{protocol="binary"} 1.0' in text
    assert _get_status(f"http://127.0.0.1:{METRICS_PORT}/other") == 404


def _get_status(url: str) -> int:
    try:
        _get(url)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_real_prometheus_scrapes_decision_counters(metrics_server, tmp_path):
    prom = shutil.which("prometheus")
    if prom is None:
        pytest.skip("prometheus is not installed")
    with Client(metrics_server.query) as c:
        for _ in range(7):
            c.decide("sshd", "192.0.2.1")
        c.decide("smtpd", "192.0.2.66")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: acl
    scrape_interval: 1s
    static_configs:
      - targets: ["127.0.0.1:{METRICS_PORT}"]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path}/tsdb",
                             f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        q = urllib.parse.quote('acl_decisions_total{service="sshd",verdict="allow"}')
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={q}"

        def answered():
            try:
                body = json.loads(_get(url))
            except OSError:
                return None
            res = body.get("data", {}).get("result", [])
            return res or None

        res = wait_for(answered, 45, "prometheus to scrape acl")
        assert res[0]["metric"]["job"] == "acl"
        assert res[0]["metric"]["reason"] == "ok"
        assert float(res[0]["value"][1]) == 7.0
        q = urllib.parse.quote('acl_decisions_total{service="smtpd",reason="tcprules"}')
        body = json.loads(_get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={q}"))
        assert float(body["data"]["result"][0]["value"][1]) == 1.0
        q = urllib.parse.quote('up{job="acl"}')
        body = json.loads(_get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={q}"))
        assert body["data"]["result"][0]["value"][1] == "1"
    finally:
        stop_process(proc, timeout=15)


def test_idle_metrics_connections_are_closed(metrics_server):
    """Any local user reaches the metrics port: connections that never ask
    are closed after METRICS_IDLE seconds, so they cannot pile up and take
    the descriptors the query socket needs."""
    import socket
    import time

    from acl.serve.conn import METRICS_IDLE

    idle = []
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5,
                                         source_address=(f"127.0.9.{i + 1}", 0))
            idle.append(s)
        t0 = time.monotonic()
        for s in idle:
            s.settimeout(METRICS_IDLE + 10)
            try:
                assert s.recv(1) == b""            # closed by the server
            except ConnectionResetError:
                pass
        waited = time.monotonic() - t0
        assert waited < METRICS_IDLE + 10, waited
    finally:
        for s in idle:
            s.close()
    # and a real scrape is still answered
    assert b"# TYPE acl_reloads_total counter" in _get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
