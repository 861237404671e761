"""Programs the live tests run inside their namespaces (``python -m tests.nfq.netns_tools``).

    server --tcp PORT --udp PORT --seconds S     TCP: greet and close; UDP: echo
    client 'JSON attempts'                       print JSON results
    door --policy TOML --dump PATH               the NFQUEUE front door on the real engine

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


def door(args) -> int:
    from acl.engine import Engine
    from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor

    engine = Engine.from_path(args.policy)
    config = NfqueueConfig.from_table(engine.policy.nfqueue, engine.policy.path)
    front = NfqueueFrontDoor(engine, config)

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        front.start(loop)
        print("ready", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), args.seconds)
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
            "compiled_plan": engine.plan is not None,
            "queues": front.queue_counters(),
            "metrics": sorted({f.name for f in front.metric_families()}),
        }
        front.close()
        with open(args.dump, "w") as f:
            json.dump(counters, f)

    asyncio.run(main())
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
    d = sub.add_parser("door")
    d.add_argument("--policy", required=True)
    d.add_argument("--dump", required=True)
    d.add_argument("--seconds", type=float, default=120)
    args = p.parse_args(argv)
    return {"server": server, "client": client, "door": door}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
