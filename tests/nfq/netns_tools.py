"""Programs the live tests run inside their namespaces (``python -m tests.nfq.netns_tools``).

    server --tcp PORT --udp PORT --seconds S     TCP: greet and close; UDP: echo
    client 'JSON attempts'                       print JSON results
    flow SRC DST PORT --count N --gap S          N datagrams from one UDP socket (one flow)
    door --policy TOML --dump PATH               acl serve's Server with the NFQUEUE front door
    binding --queue N --port P                   acl.nfq.Queue driven on loopback
    verdicts --queue N --port P --seed S         random verdict codes; what the kernel did
    peer --queue N --batch B --range R < STEPS   acl.nfq.Queue reading a netlink peer's messages
    overflow --queue N --port P --count C        a socket too small: ids lost, as the kernel counts

Every loop here is bounded by a deadline; every program exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
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


#: Linux's SO_RCVMARK (asm-generic/socket.h; Python names it from 3.12 on):
#: a received datagram's skb mark, as a control message typed SO_MARK.
SO_RCVMARK = getattr(socket, "SO_RCVMARK", 75)
SO_MARK = getattr(socket, "SO_MARK", 36)


def verdicts(args) -> int:
    """Random verdict codes, held packets and late verdicts on a real queue.

    The namespace's rules (tests/nfq/test_verdicts_live.py) queue UDP to
    ``port`` and ``port + 1`` on loopback, IPv4 and IPv6; ``port + 1``'s
    packets are marked first, and a packet coming back with the REJECT mark
    is accepted: each receiver reads the mark a datagram arrived with.  Each
    datagram comes from a socket of its own and says its index.  Printed: per
    packet, the code it was given and what the kernel did with it ("drop",
    "accept" + mark), the kernel's queue length after every verdict against
    the packets held, and every record field that was not what was sent.
    """
    import random

    from acl import nfq
    from acl.wire.packet import decode

    rng = random.Random(args.seed)
    port, mark, premark, rng_range = args.port, args.mark, args.premark, 64
    q = nfq.Queue(args.queue, batch=8, copy_range=rng_range, maxlen=1000)
    rx = {}
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for p in (port, port + 1):
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
            s.bind((host, p))
            s.setblocking(False)
            rx[(fam, p)] = s
    sent = []          # (family, dport, sport, ip length) by index
    given = {}         # index -> code finally given
    by_id = {}         # packet id -> index
    held: dict[int, int] = {}     # packet id -> index, oldest first
    problems, queue_lengths = [], []
    next_id = 1

    def queued() -> int:
        st = nfq.read_queue_stats().get(args.queue)
        return st.queue_total if st else -1

    def check_queue(what, unread=0):
        # the kernel's queue: the packets held, and those sent and not read yet
        queue_lengths.append([what, queued(), len(held) + unread])

    def release(count):
        for pid in rng.sample(sorted(held), min(count, len(held))):
            code = rng.choice([nfq.DROP, nfq.ACCEPT, nfq.REJECT, 9])   # 9: no code: DROP
            given[held.pop(pid)] = nfq.DROP if code == 9 else code
            q.verdict_one(pid, code, mark)
        check_queue("released")

    for rnd in range(args.rounds + 1):
        # the last round's packets are all held, for verdict_all to answer
        k = rng.randrange(3, 15) if rnd < args.rounds else 2
        first = len(sent)
        for _ in range(k):
            fam = rng.choice([socket.AF_INET, socket.AF_INET6])
            dport = port + rng.randrange(2)
            size = rng.choice([4, 4, 4, 200])         # 200: past the copy range
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1" if fam == socket.AF_INET else "::1", 0))
            s.sendto(b"%04d" % len(sent) + b"x" * (size - 4),
                     ("127.0.0.1" if fam == socket.AF_INET else "::1", dport))
            iplen = (20 if fam == socket.AF_INET else 40) + 8 + size
            sent.append((fam, dport, s.getsockname()[1], iplen))
            s.close()
        deadline = time.monotonic() + 5
        got = 0
        while got < k and time.monotonic() < deadline:
            n = q.recv()
            if n == 0:
                time.sleep(0.005)
                continue
            codes = bytearray()
            for pid, hw, pmark, wire, data in q.iter_records(n):
                i = sent_index(data, hw, len(sent), first + got)
                got += 1
                fam, dport, sport, iplen = sent[i]
                want = (next_id, 0x0800 if fam == socket.AF_INET else 0x86DD,
                        premark if dport == port + 1 else 0, iplen, min(iplen, rng_range))
                if (pid, hw, pmark, wire, len(data)) != want:
                    problems.append(["record", i, [pid, hw, pmark, wire, len(data)], list(want)])
                key = decode(data, wire_length=wire)
                if (key.sport, key.dport) != (sport, dport):
                    problems.append(["ports", i, [key.sport, key.dport], [sport, dport]])
                next_id = pid + 1
                by_id[pid] = i
                code = rng.choice([nfq.DROP, nfq.ACCEPT, nfq.ACCEPT, nfq.REJECT, nfq.HOLD])
                if rnd == args.rounds:
                    code = nfq.HOLD
                if code == nfq.HOLD:
                    held[pid] = i
                else:
                    given[i] = code
                codes.append(code)
            # codes past the batch's packets name no packet: ignored
            extra = bytes(rng.choice([nfq.DROP, nfq.ACCEPT]) for _ in range(rng.choice([0, 0, 3])))
            q.verdict(bytes(codes) + extra, mark, next(iter(held)) if held else -1)
            if rng.random() < 0.3:          # the batch is answered: a second answer is none
                q.verdict(bytes([nfq.DROP]) * n, mark, -1)
            check_queue(f"batch {rnd}", k - got)
        if got < k:
            problems.append(["missing", rnd, got, k])
        if rnd < args.rounds - 1:
            release(rng.randrange(0, 3))
    if held and max(held) != next_id - 1:
        problems.append(["the last packet read is not held", max(held), next_id - 1])
    # the rest -- the latest packet read among them -- with one batch verdict,
    # as the door answers on errors
    for i in held.values():
        given[i] = nfq.ACCEPT
    held.clear()
    q.verdict_all(nfq.ACCEPT)
    check_queue("verdict_all")
    time.sleep(0.2)
    outcome = ["drop"] * len(sent)
    for s in rx.values():
        for _ in range(1000):
            try:
                data, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(4))
            except BlockingIOError:
                break
            m = next((int.from_bytes(d[:4], sys.byteorder) for lvl, t, d in anc
                      if lvl == socket.SOL_SOCKET and t == SO_MARK), 0)
            outcome[int(data[:4])] = f"accept {m:#x}"
    extra = q.recv()
    print(json.dumps({
        "given": [given.get(i, -1) for i in range(len(sent))],
        "premarked": [d == port + 1 for _f, d, _s, _l in sent],
        "outcome": outcome, "queue_lengths": queue_lengths, "problems": problems,
        "requeued": extra, "gaps": q.gaps, "nlerrors": q.netlink_errors}), flush=True)
    q.close()
    return 0


def peer(args) -> int:
    """acl_nfq_recv on messages this process sends to the queue's socket.

    A process with CAP_NET_ADMIN may send to any netlink socket of its
    namespace by port id, as the kernel does: the steps on stdin (JSON, a
    list of lists of hex datagrams) are sent step by step, each followed by
    one ``recv``.  Printed per step: the records read and the counters; then
    the counters after a ``verdict_all`` and a ``recv``."""
    from acl import nfq

    steps = json.loads(sys.stdin.read())
    q = nfq.Queue(args.queue, batch=args.batch, copy_range=args.range, maxlen=16)
    with socket.socket(fileno=os.dup(q.fileno())) as own:
        portid = own.getsockname()[0]
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as tx:   # NETLINK_NETFILTER
        for datagrams in steps:
            for d in datagrams:
                tx.sendto(bytes.fromhex(d), (portid, 0))
            n = q.recv()
            out.append({"records": [[pid, hw, mark, wire, data.hex()]
                                    for pid, hw, mark, wire, data in q.iter_records(n)],
                        "gaps": q.gaps, "nlerrors": q.netlink_errors,
                        "last_error": q.last_netlink_error})
            q.verdict(bytes([nfq.HOLD]) * n)      # nothing to answer: the kernel queued none
    # a batch verdict up to the latest id read: the kernel has queued none of
    # them, so it refuses it (ENOENT), and that comes back as an error
    q.verdict_all(nfq.ACCEPT)
    q.recv()
    out.append({"records": [], "gaps": q.gaps, "nlerrors": q.netlink_errors,
                "last_error": q.last_netlink_error})
    q.close()
    print(json.dumps(out), flush=True)
    return 0


def overflow(args) -> int:
    """``count`` datagrams queued at once to a queue whose socket holds only a
    few (fail-closed): the kernel drops the rest and counts them
    (user_dropped), their ids never reach acl.  Printed: acl's gaps and
    overruns, the kernel's counters, and the packets read."""
    from acl import nfq

    q = nfq.Queue(args.queue, batch=64, copy_range=64, maxlen=1000, fail_open=False,
                  rcvbuf=1)          # the kernel's smallest receive buffer
    read = []

    def drain():
        for _ in range(100):
            n = q.recv()
            if n == 0:
                return
            read.extend(pid for pid, *_ in q.iter_records(n))
            q.verdict(bytes([nfq.ACCEPT]) * n)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(args.count):
            s.sendto(b"%04d" % i, ("127.0.0.1", args.port))
        wait_for_ids(args.queue, args.count)
        drain()
        s.sendto(b"last", ("127.0.0.1", args.port))      # its id shows the gap before it
        wait_for_ids(args.queue, args.count + 1)
        drain()
    st = nfq.read_queue_stats()[args.queue]
    print(json.dumps({"read": read, "gaps": q.gaps, "overruns": q.overruns,
                      "user_dropped": st.user_dropped, "id_sequence": st.id_sequence,
                      "waiting": st.queue_total}), flush=True)
    q.close()
    return 0


def sent_index(data: bytes, hw: int, sent: int, fallback: int) -> int:
    """The index a sender wrote at the start of a UDP payload.  Packets met
    on INPUT go through each CPU's backlog, so under load two may reach the
    queue in another order than they were sent: the index, not the arrival
    order, says which one a record is."""
    at = (20 if hw == 0x0800 else 40) + 8
    try:
        i = int(data[at:at + 4])
    except ValueError:
        return fallback
    return i if 0 <= i < sent else fallback


def wait_for_ids(queue: int, count: int, seconds: float = 5.0) -> None:
    """Wait (bounded) until the kernel has numbered ``count`` packets of the
    queue: it does so in softirq, which a loaded machine may put off."""
    from acl import nfq

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        st = nfq.read_queue_stats().get(queue)
        if st is not None and st.id_sequence >= count:
            return
        time.sleep(0.01)


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
    v = sub.add_parser("verdicts")
    v.add_argument("--queue", type=int, required=True)
    v.add_argument("--port", type=int, required=True)
    v.add_argument("--seed", type=int, required=True)
    v.add_argument("--rounds", type=int, default=6)
    v.add_argument("--mark", type=lambda x: int(x, 0), default=0xAC1)
    v.add_argument("--premark", type=lambda x: int(x, 0), default=0x5EED)
    e = sub.add_parser("peer")
    e.add_argument("--queue", type=int, required=True)
    e.add_argument("--batch", type=int, required=True)
    e.add_argument("--range", type=int, required=True)
    o = sub.add_parser("overflow")
    o.add_argument("--queue", type=int, required=True)
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--count", type=int, default=40)
    args = p.parse_args(argv)
    return {"server": server, "client": client, "flow": flow, "door": door,
            "binding": binding, "verdicts": verdicts, "peer": peer,
            "overflow": overflow}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
