"""Programs the live tests run inside their namespaces (``python -m tests.nfq.netns_tools``).

    server --tcp PORT --udp PORT --seconds S     TCP: greet and close; UDP: echo
    client 'JSON attempts'                       print JSON results
    flow SRC DST PORT --count N --gap S          N datagrams from one UDP socket (one flow)
    door --policy TOML --dump PATH               acl serve's Server with the NFQUEUE front door
    binding --queue N --port P                   acl.nfq.Queue driven on loopback

Every loop here is bounded by a deadline; every program exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import selectors
import signal
import socket
import sys
import time


def server(args) -> int:
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", args.tcp))
    tcp.listen(1024)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", args.udp))
    udp.setblocking(False)
    sel.register(tcp, selectors.EVENT_READ)
    sel.register(udp, selectors.EVENT_READ)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while not stop and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            for _ in range(256):
                try:
                    if key.fileobj is tcp:
                        c, _peer = tcp.accept()
                        c.sendall(b"ok\n")
                        c.close()
                    else:
                        data, peer = udp.recvfrom(2048)
                        udp.sendto(data, peer)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
    return 0


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def client(args) -> int:
    """Attempts ``[kind, src, dst, port]`` at once; results "ok", "refused", "timeout"."""
    attempts = json.loads(args.attempts)
    sel = selectors.DefaultSelector()
    results: list[str | None] = [None] * len(attempts)
    socks = []
    for i, (kind, src, dst, port) in enumerate(attempts):
        s = socket.socket(_family(src), socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((src, 0))
        socks.append(s)
        if kind == "tcp":
            rc = s.connect_ex((dst, port))
            if rc not in (0, errno.EINPROGRESS):
                results[i] = "refused" if rc == errno.ECONNREFUSED else f"error {rc}"
                continue
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, i)
        else:
            s.connect((dst, port))
            s.send(b"ping %d" % i)
            sel.register(s, selectors.EVENT_READ, i)
        if args.gap:
            time.sleep(args.gap)
    deadline = time.monotonic() + args.timeout
    while any(r is None for r in results) and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, min(0.1, deadline - time.monotonic()))):
            i = key.data
            s = key.fileobj
            kind = attempts[i][0]
            try:
                if kind == "tcp":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        results[i] = "refused" if err == errno.ECONNREFUSED else f"error {err}"
                    else:
                        data = s.recv(16)
                        if not data:
                            continue
                        results[i] = "ok" if data.startswith(b"ok") else "bad"
                else:
                    s.recv(64)
                    results[i] = "ok"
            except BlockingIOError:
                continue
            except ConnectionRefusedError:
                results[i] = "refused"
            except OSError as exc:
                results[i] = f"error {exc.errno}"
            sel.unregister(s)
    for s in socks:
        s.close()
    print(json.dumps([r or "timeout" for r in results]), flush=True)
    return 0


def flow(args) -> int:
    """One UDP flow: ``count`` datagrams from one socket, ``gap`` apart; the
    replies are not read (a one-way flow, as syslog or statsd send)."""
    with socket.socket(_family(args.src), socket.SOCK_DGRAM) as s:
        s.bind((args.src, 0))
        for i in range(args.count):
            s.sendto(b"one-way %d" % i, (args.dst, args.port))
            time.sleep(args.gap)
    print("sent", flush=True)
    return 0


def door(args) -> int:
    """acl serve's Server on the policy, with the NFQUEUE front door started
    the way acl serve starts it (acl.serve.nfqueue.start_for_server)."""
    from acl.engine import KERNEL, Engine
    from acl.policy import load_policy
    from acl.serve.nfqueue import start_for_server
    from acl.serve.server import Server

    engine = Engine(load_policy(args.policy))
    server = Server(engine, compiled=KERNEL == "compiled", log_fn=lambda m: None)
    server.bind()

    async def main():
        front = start_for_server(server)
        try:
            await asyncio.wait_for(
                server.serve(ready=lambda: print("ready", flush=True)), args.seconds)
        except TimeoutError:
            pass
        counters = {
            "packets": front.packets,
            "verdicts": [[*k, n] for k, n in sorted(front.verdicts.items())],
            "decode_errors": front.decode_errors,
            "unmapped": front.unmapped,
            "looped": front.looped,
            "io_errors": front.io_errors,
            "internal_errors": front.internal_errors,
            "fast_batches": front.fast_batches,
            "residual": front.residual,
            "held_total": front.held_total,
            "held_batches": front.held_batches,
            "held": front.held,
            "compiled_plan": engine.plan is not None,
            "queues": front.queue_counters(),
            "metrics": server.metrics_body()[0].decode(),
        }
        front.close()
        with open(args.dump, "w") as f:
            json.dump(counters, f)

    asyncio.run(main())
    return 0


def binding(args) -> int:
    """Drive acl.nfq.Queue on loopback in this namespace; print what happened as JSON."""
    import errno as e

    from acl import nfq
    from acl.wire.packet import decode

    out = {}
    port = args.port
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", port))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q = nfq.Queue(args.queue, batch=8, copy_range=64, maxlen=100)
    try:
        nfq.Queue(args.queue)
    except OSError as exc:
        out["second_bind"] = exc.errno
    for i in range(12):
        tx.sendto(b"d%02d" % i, ("127.0.0.1", port))
    time.sleep(0.2)
    n1 = q.recv()                    # a batch is at most `batch` packets
    recs = list(q.iter_records(n1))
    out["first_batch"] = n1
    out["ids"] = [r[0] for r in recs]
    out["keys"] = sorted({(k.src, k.dport, k.proto) for k in
                          (decode(r[4], wire_length=r[3]) for r in recs)})
    q.verdict(bytes([nfq.ACCEPT if i % 2 == 0 else nfq.DROP for i in range(n1)]))
    n2 = q.recv()
    out["second_batch"] = n2
    q.verdict([nfq.ACCEPT] * n2)
    out["third_batch"] = q.recv()
    time.sleep(0.2)
    got = []
    for _ in range(100):
        try:
            got.append(rx.recv(64).decode())
        except BlockingIOError:
            break
    out["delivered"] = got
    st = q.stats()
    out["stats"] = [st.queue, st.queue_total, st.copy_range, st.id_sequence]
    out["gaps"] = q.gaps
    out["nlerrors"] = q.netlink_errors
    q.close()
    q.close()                          # twice is fine
    try:
        q.recv()
    except OSError as exc:
        out["closed"] = exc.errno == e.EBADF
    out["unbound"] = nfq.read_queue_stats().get(args.queue) is None
    print(json.dumps(out), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--tcp", type=int, required=True)
    s.add_argument("--udp", type=int, required=True)
    s.add_argument("--seconds", type=float, default=120)
    c = sub.add_parser("client")
    c.add_argument("attempts")
    c.add_argument("--timeout", type=float, default=1.0)
    c.add_argument("--gap", type=float, default=0.0)
    f = sub.add_parser("flow")
    f.add_argument("src")
    f.add_argument("dst")
    f.add_argument("port", type=int)
    f.add_argument("--count", type=int, default=10)
    f.add_argument("--gap", type=float, default=0.1)
    d = sub.add_parser("door")
    d.add_argument("--policy", required=True)
    d.add_argument("--dump", required=True)
    d.add_argument("--seconds", type=float, default=120)
    b = sub.add_parser("binding")
    b.add_argument("--queue", type=int, required=True)
    b.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    return {"server": server, "client": client, "flow": flow, "door": door,
            "binding": binding}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
