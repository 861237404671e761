"""acl-wrap against Debian's tcpd, both started by the real xinetd.

What is measured (one run, everything set up before any timing):

* three xinetd services on 127.0.0.1, all ``NAMEINARGS``, all running
  ``/bin/echo ok`` as the real server, cps and instances out of the way:
  - **plain**: xinetd runs /bin/echo itself (the floor: fork + exec);
  - **tcpd**: ``server = /usr/sbin/tcpd`` -- libwrap reads hosts.allow;
  - **acl-wrap**: ``server = acl-wrap`` -- asks ``acl serve`` (real, running
    on the same hosts.allow/hosts.deny) with a lease, then execs echo.
* one timed round = one connection from 127.0.0.2: connect, read until the
  server closes.  That is the per-connection latency; connections/s is its
  inverse (sequential clients, as a super-server sees a trickle).
* the **allowed** path only: tcpd holds a refused connection for 5 s
  (spec D.1 22), which would measure its sleep, not its work.
* reported: each mean, and the overhead over plain of acl-wrap and of tcpd,
  with their ratio (target: acl-wrap's overhead <= tcpd's), in
  ``extra_info`` and printed.

tcpd reads the real /etc/hosts.allow, so xinetd runs in a private mount
namespace (``unshare -m``) where the bench's files are bind-mounted there.

Run: ``python -m pytest bench/bench_wrap.py --benchmark-only -s`` (as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.wrap import harness, live  # noqa: E402

PORTS = {"plain": 25900, "tcpd": 25901, "acl-wrap": 25902}
CLIENT = "127.0.0.2"
ALLOW = "echo: 127.0.0.0/255.0.0.0\n"
DENY = "ALL: ALL\n"
ROUNDS = 300
MEANS: dict[str, float] = {}


def service(name: str, port: int, server: str, args: str) -> str:
    return f"""service {name}
{{
	type		= UNLISTED
	port		= {port}
	socket_type	= stream
	protocol	= tcp
	wait		= no
	user		= root
	bind		= 127.0.0.1
	flags		= NAMEINARGS NOLIBWRAP
	server		= {server}
	server_args	= {args}
	cps		= 100000 1
	instances	= UNLIMITED
	env		= ACL_WRAP_SOCKET={{sock}}
}}
"""


@pytest.fixture(scope="module")
def rig():
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare -m for tcpd's hosts.allow)")
    for exe in ("xinetd", "/usr/sbin/tcpd"):
        if not shutil.which(exe):
            pytest.skip(f"{exe} not installed")
    d = Path(tempfile.mkdtemp(prefix="awb."))
    d.chmod(0o755)
    wrap = harness.wrap_binary(d)
    side_dir = d / "sidecar"
    side_dir.mkdir()
    sidecar = live.Sidecar(side_dir)
    # the sidecar decides on exactly tcpd's files: hosts_access source only
    sidecar.config.write_text(sidecar.config.read_text().split("[[source]]")[0]
                              + '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\n'
                              'deny = "hosts.deny"\nservices = ["*"]\n\n[run]\nwatch = false\n')
    (side_dir / "hosts.allow").write_text(ALLOW)
    (side_dir / "hosts.deny").write_text(DENY)
    sidecar.start()
    conf = "".join([
        service("plain", PORTS["plain"], "/bin/echo", "/bin/echo ok"),
        service("viatcpd", PORTS["tcpd"], "/usr/sbin/tcpd", "/bin/echo ok"),
        service("viawrap", PORTS["acl-wrap"], str(wrap), "/bin/echo ok"),
    ]).replace("{sock}", str(sidecar.sock))
    (d / "xinetd.conf").write_text(conf)
    argv = harness.ns_command(d, "xinetd", "xinetd",
                              ["-dontfork", "-f", str(d / "xinetd.conf"), "-pidfile",
                               str(d / "xinetd.pid"), "-filelog", str(d / "xinetd.log")],
                              allow=ALLOW, deny=DENY)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end and not all(live.listening(p) for p in PORTS.values()):
            time.sleep(0.05)
        for name, port in PORTS.items():      # each path really answers "ok"
            assert one_connection(port) == b"ok\n", name
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        sidecar.stop()
        shutil.rmtree(d, ignore_errors=True)
        report()


def one_connection(port: int) -> bytes:
    s = socket.socket()
    s.bind((CLIENT, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    s.close()
    return data


def run(benchmark, name: str) -> None:
    port = PORTS[name]
    out = benchmark.pedantic(one_connection, args=(port,), rounds=ROUNDS, warmup_rounds=20)
    assert out == b"ok\n"
    mean = benchmark.stats.stats.mean
    MEANS[name] = mean
    benchmark.extra_info["connections_per_s"] = round(1 / mean, 1)
    benchmark.extra_info["latency_ms"] = round(mean * 1000, 3)


def test_xinetd_plain(benchmark, rig):
    """One connection through xinetd to /bin/echo, no wrapper (the floor)."""
    run(benchmark, "plain")


def test_xinetd_tcpd(benchmark, rig):
    """One allowed connection through xinetd + Debian's tcpd + /bin/echo."""
    run(benchmark, "tcpd")


def test_xinetd_acl_wrap(benchmark, rig):
    """One allowed connection through xinetd + acl-wrap (sidecar, lease) + /bin/echo."""
    run(benchmark, "acl-wrap")
    if {"plain", "tcpd"} <= MEANS.keys():
        over_wrap = MEANS["acl-wrap"] - MEANS["plain"]
        over_tcpd = MEANS["tcpd"] - MEANS["plain"]
        benchmark.extra_info["overhead_ms_acl_wrap"] = round(over_wrap * 1000, 3)
        benchmark.extra_info["overhead_ms_tcpd"] = round(over_tcpd * 1000, 3)
        if over_tcpd > 0:
            benchmark.extra_info["overhead_ratio_wrap_over_tcpd"] = round(over_wrap / over_tcpd, 3)


INTERLEAVED: dict[str, list[float]] = {"plain": [], "tcpd": [], "acl-wrap": []}


def three_in_turn() -> None:
    for name, port in PORTS.items():
        t0 = time.perf_counter()
        one_connection(port)
        INTERLEAVED[name].append(time.perf_counter() - t0)


def test_interleaved(benchmark, rig):
    """One connection each to plain, tcpd and acl-wrap, in turn (load is shared fairly)."""
    benchmark.pedantic(three_in_turn, rounds=ROUNDS, warmup_rounds=5)
    med = {k: statistics.median(v[5:]) for k, v in INTERLEAVED.items()}
    over_wrap, over_tcpd = med["acl-wrap"] - med["plain"], med["tcpd"] - med["plain"]
    for k, v in med.items():
        benchmark.extra_info[f"median_ms_{k}"] = round(v * 1000, 3)
    benchmark.extra_info["median_overhead_ms_acl_wrap"] = round(over_wrap * 1000, 3)
    benchmark.extra_info["median_overhead_ms_tcpd"] = round(over_tcpd * 1000, 3)
    if over_tcpd > 0:
        benchmark.extra_info["median_overhead_ratio"] = round(over_wrap / over_tcpd, 3)


def report() -> None:
    if all(len(v) > 5 for v in INTERLEAVED.values()):
        med = {k: statistics.median(v[5:]) for k, v in INTERLEAVED.items()}
        print("\nacl-wrap bench, interleaved rounds (medians):")
        for name, m in med.items():
            print(f"  {name:9s} {m * 1000:7.3f} ms/connection  {1 / m:8.1f} connections/s")
        ow, ot = med["acl-wrap"] - med["plain"], med["tcpd"] - med["plain"]
        print(f"  overhead over plain: acl-wrap {ow * 1000:.3f} ms, tcpd {ot * 1000:.3f} ms"
              + (f", ratio {ow / ot:.2f}" if ot > 0 else ""))
    if len(MEANS) < 3:
        return
    print("\nacl-wrap bench (xinetd, allowed path, sequential clients):")
    for name in ("plain", "tcpd", "acl-wrap"):
        m = MEANS[name]
        print(f"  {name:9s} {m * 1000:7.3f} ms/connection  {1 / m:8.1f} connections/s")
    over_wrap = MEANS["acl-wrap"] - MEANS["plain"]
    over_tcpd = MEANS["tcpd"] - MEANS["plain"]
    print(f"  overhead over plain: acl-wrap {over_wrap * 1000:.3f} ms, "
          f"tcpd {over_tcpd * 1000:.3f} ms, ratio {over_wrap / over_tcpd:.2f}"
          if over_tcpd > 0 else "  tcpd overhead not measurable")
