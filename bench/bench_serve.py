"""Decision service benchmarks (issue 6), each measured beside its floor.

The floor is a bare C echo server on the same kind of socket (a Unix stream
socket, one epoll loop, written below and compiled at run time in a temp
dir): it answers every byte it reads by writing it back, so it is what any
server on this socket costs with zero work per request.

* pipelined decisions per second: one client writes N DECIDE frames without
  waiting while it reads the replies (acl) / the echoes (C);
* sequential round trips: one frame, wait for its answer, repeat; p50/p99.
  First as the scheduler places the processes ("free"), then with the
  client and both servers pinned alike ("same CPU": all three on one CPU;
  "other CPU": the servers on a second one).  On a VM a wake-up across
  CPUs costs an interrupt (several us), and where the scheduler puts a
  server is a coin it tosses per process, not a property of the server:
  the pinned runs compare the two servers' own costs under one placement;
* in-process batch decisions: ``BatchPlan.run`` over a buffer of frames (the
  compiled batch path without any socket);
* reload of a large prefix policy under load: time until the new policy
  answers, with zero failed requests meanwhile (``ACL_BENCH_PREFIXES``, by
  default 1,000,000, written ``ACL_BENCH_PER_LINE`` to a hosts.allow line,
  by default 50: libwrap reads lines of under 2 KiB).

Run: ``python -m pytest bench/bench_serve.py --benchmark-only -s``.
Each test prints one line of numbers and stores them in ``extra_info``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from acl.model import Request
from acl.wire import binary as wb

ROOT = Path(__file__).resolve().parent.parent
N_PIPELINED = int(os.environ.get("ACL_BENCH_PIPELINED", "400000"))
N_RTT = int(os.environ.get("ACL_BENCH_RTT", "20000"))
N_PREFIXES = int(os.environ.get("ACL_BENCH_PREFIXES", "1000000"))
PER_LINE = int(os.environ.get("ACL_BENCH_PER_LINE", "50"))

ECHO_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A bare echo server on a Unix stream socket: the floor for acl serve. */
int main(int argc, char **argv) {
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096)) { perror("bind"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char buf[1 << 18];
    puts("ready"); fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, 0)) >= 0) {  /* blocking: write waits */
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) { close(fd); continue; }
            ssize_t off = 0;
            while (off < r) {
                ssize_t w = write(fd, buf + off, r - off);
                if (w < 0) { close(fd); break; }
                off += w;
            }
        }
    }
}
"""


PY_ECHO = """
import asyncio, sys
class Echo(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
    def data_received(self, d):
        self.t.write(d)
async def main():
    await asyncio.get_running_loop().create_unix_server(Echo, sys.argv[1])
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _bench_policy(d: Path, prefixes: int = 1000, rate: bool = True) -> Path:
    """An address-and-limits policy: sshd allowed from ``prefixes`` /28s,
    everything else denied, a per-source token bucket that never runs dry."""
    write_prefix_files(d, prefixes)
    p = d / "policy.toml"
    p.write_text(f"""
[sockets]
query = "query.sock"
admin = "admin.sock"
admin_uids = [{os.getuid()}]
[limits]
sources = 65536
rate = {1e9 if rate else 0}
burst = {1e9 if rate else 0}
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
services = ["sshd"]
[[source]]
type = "tcprules"
file = "tcp.smtpd"
services = ["smtpd"]
[run]
watch = false
""")
    (d / "tcp.smtpd").write_text("192.0.2.66:deny\n:allow\n")
    return p


def write_prefix_files(d: Path, n: int, shift: int = 0) -> None:
    lines = []
    per = PER_LINE
    for j in range(0, n, per):          # libwrap reads lines of < 2 KiB
        pats = []
        for i in range(j, min(n, j + per)):
            k = i + shift
            a, b, c, e = 10 + (k >> 20), (k >> 12) & 0xFF, (k >> 4) & 0xFF, (k & 0xF) * 16
            pats.append(f"{a}.{b}.{c}.{e}/255.255.255.240")
        lines.append("sshd: " + " ".join(pats) + "\n")
    (d / "hosts.allow").write_text("".join(lines))
    (d / "hosts.deny").write_text("ALL: ALL\n")


def _requests(n: int) -> list[Request]:
    out = []
    for i in range(n):
        k = (i * 7919) % 2000
        a, b, c, e = 10 + (k >> 20), (k >> 12) & 0xFF, (k >> 4) & 0xFF, (k & 0xF) * 16 + 3
        client = f"{a}.{b}.{c}.{e}" if i % 4 else f"203.0.113.{i % 250}"
        out.append(Request("sshd", client, 40000 + i % 20000))
    return out


def _serve_until_done(argv: list[str], path: str, d: Path):
    """Run an echo floor that prints "ready"; yield its socket path; then
    stop it by its handle and remove its directory."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield path
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def echo_path():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the echo floor")
    d = Path(tempfile.mkdtemp(prefix="acl-bench-echo-"))
    (d / "echo.c").write_text(ECHO_C)
    subprocess.run([cc, "-O2", "-o", str(d / "echo"), str(d / "echo.c")], check=True)
    path = str(d / "echo.sock")
    yield from _serve_until_done([str(d / "echo"), path], path, d)


@pytest.fixture(scope="module")
def py_echo_path():
    """A bare asyncio echo server: what the event loop alone costs acl serve."""
    d = Path(tempfile.mkdtemp(prefix="acl-bench-pyecho-"))
    path = str(d / "pyecho.sock")
    yield from _serve_until_done([sys.executable, "-c", PY_ECHO, path], path, d)


def start_acl(d: Path, cfg: Path) -> subprocess.Popen:
    log = open(d / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "acl", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(d))
    log.close()
    deadline = time.monotonic() + 300
    while "ready" not in (d / "serve.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((d / "serve.log").read_text())
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def acl_path():
    d = Path(tempfile.mkdtemp(prefix="acl-bench-serve-"))
    proc = start_acl(d, _bench_policy(d))
    try:
        yield str(d / "query.sock")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def pipelined(path: str, blob: bytes, frames: int) -> float:
    """Write ``blob`` (``frames`` frames) while reading as many reply frames;
    returns seconds."""
    s = _connect(path)
    t0 = time.perf_counter()
    w = threading.Thread(target=s.sendall, args=(blob,))
    w.start()
    got = 0
    buf = bytearray()
    unpack = struct.Struct("<I").unpack_from
    while got < frames:
        data = s.recv(1 << 20)
        if not data:
            raise RuntimeError("server closed")
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            ln = unpack(buf, pos)[0] + 4
            if n - pos < ln:
                break
            pos += ln
            got += 1
        del buf[:pos]
    dt = time.perf_counter() - t0
    w.join()
    s.close()
    return dt


def round_trips(path: str, frame: bytes, n: int) -> list[float]:
    s = _connect(path)
    lat = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        s.sendall(frame)
        need = 4
        data = s.recv(65536)
        while len(data) < need or len(data) < 4 + struct.unpack_from("<I", data)[0]:
            data += s.recv(65536)
        lat.append((clock() - t0) / 1e3)
    s.close()
    return lat


def test_pipelined_decisions_per_second(benchmark, acl_path, echo_path):
    """Times N pipelined DECIDE frames answered by acl serve (echo floor measured alongside)."""
    reqs = _requests(N_PIPELINED)
    blob = b"".join(wb.encode_decide(i, r) for i, r in enumerate(reqs))
    echo_s = min(pipelined(echo_path, blob, N_PIPELINED) for _ in range(3))
    acl_s = benchmark.pedantic(pipelined, args=(acl_path, blob, N_PIPELINED), rounds=3,
                               iterations=1)
    acl_s = benchmark.stats.stats.min
    info = {"frames": N_PIPELINED, "acl_per_s": N_PIPELINED / acl_s,
            "echo_per_s": N_PIPELINED / echo_s, "ratio_echo_over_acl": acl_s / echo_s}
    benchmark.extra_info.update(info)
    print(f"\npipelined: acl {info['acl_per_s']:,.0f} decisions/s, C echo "
          f"{info['echo_per_s']:,.0f} frames/s, acl takes {info['ratio_echo_over_acl']:.2f}x "
          "the echo's time")


def test_sequential_round_trip_latency(benchmark, acl_path, echo_path, py_echo_path):
    """Times N sequential round trips to acl serve and to the C echo, interleaved in blocks."""
    frame = wb.encode_decide(1, _requests(2)[1])
    round_trips(echo_path, frame, 500)
    round_trips(acl_path, frame, 500)
    echo: list[float] = []
    pyecho: list[float] = []
    lat: list[float] = []
    block = 500

    def interleaved():
        # blocks of each in turn, so machine load falls on all alike
        for _ in range(max(1, N_RTT // block)):
            echo.extend(round_trips(echo_path, frame, block))
            pyecho.extend(round_trips(py_echo_path, frame, block))
            lat.extend(round_trips(acl_path, frame, block))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)

    def pct(xs, p):
        return statistics.quantiles(xs, n=100)[p - 1]

    info = {"acl_p50_us": pct(lat, 50), "acl_p99_us": pct(lat, 99),
            "echo_p50_us": pct(echo, 50), "echo_p99_us": pct(echo, 99),
            "asyncio_echo_p50_us": pct(pyecho, 50), "asyncio_echo_p99_us": pct(pyecho, 99)}
    info["p50_ratio"] = info["acl_p50_us"] / info["echo_p50_us"]
    info["p99_ratio"] = info["acl_p99_us"] / info["echo_p99_us"]
    print(f"\nround trip (free): acl p50 {info['acl_p50_us']:.1f} us p99 {info['acl_p99_us']:.1f} us; "
          f"C echo p50 {info['echo_p50_us']:.1f} us p99 {info['echo_p99_us']:.1f} us; "
          f"ratio p50 {info['p50_ratio']:.2f}x p99 {info['p99_ratio']:.2f}x; bare asyncio echo "
          f"p50 {info['asyncio_echo_p50_us']:.1f} us p99 {info['asyncio_echo_p99_us']:.1f} us")
    for place, (acl_lat, echo_lat) in placed_round_trips(acl_path, echo_path, frame).items():
        key = place.replace(" ", "_")
        p50, e50 = pct(acl_lat, 50), pct(echo_lat, 50)
        p99, e99 = pct(acl_lat, 99), pct(echo_lat, 99)
        info.update({f"{key}_acl_p50_us": p50, f"{key}_echo_p50_us": e50,
                     f"{key}_p50_ratio": p50 / e50, f"{key}_p99_ratio": p99 / e99})
        print(f"round trip ({place}): acl p50 {p50:.1f} us p99 {p99:.1f} us; C echo p50 "
              f"{e50:.1f} us p99 {e99:.1f} us; ratio p50 {p50 / e50:.2f}x p99 {p99 / e99:.2f}x")
    benchmark.extra_info.update(info)


def server_pid(path: str) -> int:
    """The PID of the process listening on ``path`` (SO_PEERCRED of a
    connection: the credentials the listener had when it called listen)."""
    s = _connect(path)
    try:
        cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        s.close()
    return struct.unpack("3i", cred)[0]


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (0: this process) onto ``cpus``."""
    tasks = os.listdir(f"/proc/{pid or os.getpid()}/task")
    for tid in tasks:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:      # a thread that ended meanwhile
            pass


def placed_round_trips(acl_path: str, echo_path: str, frame: bytes,
                       block: int = 500) -> dict[str, tuple[list[float], list[float]]]:
    """Round trips to acl and to the C echo with this process and both
    servers pinned alike: "same CPU" (all on one), and with two CPUs allowed
    "other CPU" (the servers on a second).  Affinities are put back after."""
    cpus = sorted(os.sched_getaffinity(0))
    places = {"same CPU": ({cpus[0]}, {cpus[0]})}
    if len(cpus) > 1:
        places["other CPU"] = ({cpus[0]}, {cpus[1]})
    pids = [server_pid(acl_path), server_pid(echo_path)]
    before = {pid: os.sched_getaffinity(pid) for pid in [0, *pids]}
    out = {}
    try:
        for place, (client, server) in places.items():
            _pin(0, client)
            for pid in pids:
                _pin(pid, server)
            acl_lat: list[float] = []
            echo_lat: list[float] = []
            for _ in range(max(1, N_RTT // 2 // block)):
                echo_lat.extend(round_trips(echo_path, frame, block))
                acl_lat.extend(round_trips(acl_path, frame, block))
            out[place] = (acl_lat, echo_lat)
    finally:
        for pid, cpus_before in before.items():
            _pin(pid, cpus_before)
    return out


def _xinetd_policy(d: Path) -> Path:
    """sshd as an xinetd service: only_from 1,000 /28s, cps, per_source,
    instances -- limits that never trip, so every request pays for them."""
    nets = " ".join(f"10.{(k >> 12) & 0xFF}.{(k >> 4) & 0xFF}.{(k & 0xF) * 16}/28"
                    for k in range(1000))
    (d / "xinetd.conf").write_text(
        "service ssh\n{\n\ttype = UNLISTED\n\tid = sshd\n\tsocket_type = stream\n"
        "\tprotocol = tcp\n\twait = no\n\tuser = root\n\tserver = /bin/true\n"
        "\tport = 22\n\tflags = IPv4 NOLIBWRAP\n"
        f"\tonly_from = {nets}\n\tcps = 1000000000 1\n\tper_source = 1000\n"
        "\tinstances = 100000\n}\n")
    p = d / "xpolicy.toml"
    p.write_text('[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    return p


@pytest.mark.parametrize("policy", ["hosts_access+rate", "xinetd"])
def test_in_process_batch_decisions(benchmark, tmp_path, policy):
    """Times BatchPlan.run over 1M DECIDE frames (address-and-limits policy, in process)."""
    from acl.engine import KERNEL, Engine
    from acl.policy import load_policy

    if KERNEL != "compiled":
        pytest.skip("the compiled engine is not built")
    cfg = _bench_policy(tmp_path, prefixes=1000) if policy != "xinetd" else \
        _xinetd_policy(tmp_path)
    eng = Engine(load_policy(cfg))
    plan = eng.plan
    assert plan is not None and "sshd" in plan.services
    n = 1_000_000
    reqs = _requests(4000)
    one = b"".join(wb.encode_decide(i, r) for i, r in enumerate(reqs))
    blob = one * (n // len(reqs))

    def run():
        pos, total = 0, 0
        while True:
            pos, out, status = plan.run(blob, pos, 1000.0)
            total += len(out)
            if status == 0:
                return total
            assert status == 2, status

    benchmark.pedantic(run, rounds=5, iterations=1)
    best = benchmark.stats.stats.min
    assert plan.residual == 0
    benchmark.extra_info.update({"frames": n, "decisions_per_s": n / best, "policy": policy})
    print(f"\nin-process batch ({policy}): {n / best:,.0f} decisions/s (one core)")


def _libwrap_one_connection_s(d: Path) -> float | None:
    """Seconds of one libwrap ``hosts_ctl`` on ``d``'s files; None without libwrap."""
    from bench_tcpw import LibWrap

    try:
        lw = LibWrap()
    except OSError:
        return None
    lw.use(str(d / "hosts.allow"), str(d / "hosts.deny"))
    t0 = time.perf_counter()
    granted = lw.ctl(b"sshd", b"203.0.113.5")
    elapsed = time.perf_counter() - t0
    assert granted == 0                   # hosts.deny ALL: ALL, after every pattern
    return elapsed


def test_reload_large_prefix_policy_under_load(benchmark, tmp_path):
    """Times admin reloads of an N-prefix policy while a client keeps asking: after a small
    file changed (the N-prefix layer is kept) and after the N-prefix file itself changed."""
    cfg = _bench_policy(tmp_path, prefixes=N_PREFIXES, rate=False)
    proc = start_acl(tmp_path, cfg)
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load():
        from acl.client import Client

        reqs = _requests(200)
        try:
            with Client(str(tmp_path / "query.sock"), timeout=600) as c:
                while not stop.is_set():
                    for d in c.decide_many(reqs):
                        answered[0] += 1
                        if d.reason.name not in ("OK", "LIBWRAP"):
                            failures.append(repr(d))
        except Exception as exc:
            failures.append(repr(exc))

    def reload():
        s = _connect(str(tmp_path / "admin.sock"))
        s.settimeout(900)
        s.sendall(b"reload\n")
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(65536)
        s.close()
        return data

    # (0) the prefix file changes while nobody asks: the reload's own cost
    write_prefix_files(tmp_path, N_PREFIXES, shift=2)
    t0 = time.perf_counter()
    idle = json.loads(reload())
    idle_s = time.perf_counter() - t0
    assert idle["ok"] is True, idle
    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        while answered[0] < 1000 and not failures:
            time.sleep(0.05)
        # (a) a small rule file changes: the N-prefix layer and its tables are kept
        (tmp_path / "tcp.smtpd").write_text("192.0.2.67:deny\n:allow\n")
        before = answered[0]
        t0 = time.perf_counter()
        small = json.loads(benchmark.pedantic(reload, rounds=1, iterations=1))
        small_s = time.perf_counter() - t0
        small_during = answered[0] - before
        assert small["ok"] is True, small
        # (b) the N-prefix file itself changes: read and compiled again
        write_prefix_files(tmp_path, N_PREFIXES, shift=1)
        before = answered[0]
        t0 = time.perf_counter()
        big = json.loads(reload())
        big_s = time.perf_counter() - t0
        big_during = answered[0] - before
        assert big["ok"] is True, big
    finally:
        stop.set()
        t.join(120)
        proc.terminate()
        proc.wait(60)
    assert failures == []
    # The peer: tcpd has no reload, it reads both files on every connection.
    # One libwrap hosts_ctl on the same files, for a client no rule names
    # (every pattern is compared, as for most connections to a blocklist).
    peer_s = _libwrap_one_connection_s(tmp_path)
    benchmark.extra_info.update({
        "prefixes": N_PREFIXES, "per_line": PER_LINE, "failed": len(failures),
        "small_change_reload_s": small_s, "small_change_answered_during": small_during,
        "small_change_plan_s": small.get("plan_s"), "small_change_load_s": small.get("load_s"),
        "prefix_file_reload_s": big_s, "prefix_file_answered_during": big_during,
        "prefix_file_load_s": big.get("load_s"), "prefix_file_plan_s": big.get("plan_s"),
        "prefix_file_reload_idle_s": idle_s, "libwrap_one_connection_s": peer_s})
    print(f"\nreload, {N_PREFIXES:,}-prefix policy ({PER_LINE} per line), a small file changed: {small_s:.3f} s "
          f"(rule files {small.get('load_s', 0):.3f} s, plan {small.get('plan_s', 0):.3f} s); "
          f"the prefix file changed: {big_s:.2f} s (rule files {big.get('load_s', 0):.2f} s, "
          f"plan {big.get('plan_s', 0):.2f} s); {small_during + big_during:,} requests "
          f"answered meanwhile, {len(failures)} failed; the prefix file changed with no "
          f"client asking: {idle_s:.2f} s")
    if peer_s is not None:
        print(f"peer: libwrap reads the same files for one connection in {peer_s:.2f} s "
              f"(acl's whole reload under load: {big_s / peer_s:.2f}x one tcpd connection)")
