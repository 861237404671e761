"""The NFQUEUE front door of ``acl serve``: kernel packets -> engine -> verdicts.

Theory of operation (docs/nfqueue.md has the operator's view):

* The firewall sends only the first packet of a new connection (a TCP SYN,
  the first UDP datagram of a conntrack flow) to queue N, with
  ``--queue-bypass`` so packets pass when no one listens.  We bind each
  configured queue with ``NFQA_CFG_F_FAIL_OPEN`` (a full queue or socket
  accepts instead of dropping), put its fd on the same asyncio loop as the
  Unix sockets and, when it is readable, drain it in batches: one
  ``recvmmsg`` per batch, one ``engine.decide_many`` per batch, one
  ``sendmsg`` of verdicts per batch.  At most ``MAX_BATCHES_PER_WAKEUP``
  batches per wakeup, so the Unix sockets get their turn under a flood.
* A packet becomes ``Request(service, client=src, client_port=sport,
  server=dst, server_port=dport)``; the service is the configured name of
  ``ADDR:PORT`` if given, else of ``PORT``.  Unmapped ports are accepted
  (the firewall should not have sent them) and counted apart.
* A grant is ``NF_ACCEPT``.  A refusal is ``NF_DROP``, or with
  ``reject = "reset"`` ``NF_REPEAT`` with ``reject_mark``: the packet walks
  the chain again and the deploy rule ``-m mark --mark M -j REJECT`` answers
  it with a TCP reset / ICMP port unreachable.  A packet that comes back to
  the queue already carrying the mark (no REJECT rule) is dropped, so a
  missing rule can never loop or turn a refusal into a pass.
* A packet the codec cannot read gets the ``malformed`` verdict (drop by
  default: a crafted header must not be a way around the policy) and counts
  in ``decode_errors``.  An engine that raises on a batch is asked again one
  request at a time; a request that still raises gets the ``malformed``
  verdict with reason ``error``.  Nothing a packet carries stops the loop.
* Counters are plain ints and dicts, read at scrape time
  (:meth:`NfqueueFrontDoor.metric_families`, docs/metrics.md names).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from acl import nfq
from acl.errors import PolicyError
from acl.model import Reason, Request, Verdict
from acl.wire.packet import PacketError, decode_raw

log = logging.getLogger("acl.serve.nfqueue")

MAX_BATCHES_PER_WAKEUP = 16
#: Buckets of ``acl_nfqueue_batch_size``.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_REJECT_MARK = 0xAC1
_VERDICTS = {"drop": nfq.DROP, "accept": nfq.ACCEPT}
_LABEL_VERDICT = {v: v.name.lower() for v in Verdict}
_LABEL_REASON = {r: r.name.lower() for r in Reason}


def _port(text: str, where: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise PolicyError(f"{where}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise PolicyError(f"{where}: port {port} out of range 1..65535")
    return port


def parse_port_key(key: str, where: str) -> tuple[bytes | None, int]:
    """``"22"`` -> (None, 22); ``"10.0.0.1:22"``, ``"[fd00::1]:22"`` -> (packed, 22)."""
    key = str(key).strip()
    if key.startswith("["):
        addr, sep, port = key[1:].partition("]:")
        if not sep:
            raise PolicyError(f"{where}: {key!r}: write an IPv6 address as [ADDR]:PORT")
    elif key.count(":") > 1:
        raise PolicyError(f"{where}: {key!r}: write an IPv6 address as [ADDR]:PORT")
    elif ":" in key:
        addr, _, port = key.rpartition(":")
    else:
        return None, _port(key, where)
    try:
        packed = ipaddress.ip_address(addr).packed
    except ValueError:
        raise PolicyError(f"{where}: {addr!r} is not a numeric address") from None
    return packed, _port(port, where)


@dataclass
class NfqueueConfig:
    """The ``[nfqueue]`` table (docs/configuration.md, docs/nfqueue.md)."""

    queues: tuple[int, ...] = (0,)
    ports: dict[int, str] = field(default_factory=dict)
    addr_ports: dict[tuple[bytes, int], str] = field(default_factory=dict)
    reject: str = "drop"                 # "drop" | "reset"
    reject_mark: int = DEFAULT_REJECT_MARK
    malformed: str = "drop"              # verdict for undecodable packets
    copy_range: int = 128
    queue_maxlen: int = 4096
    fail_open: bool = True
    batch: int = 256
    rcvbuf: int = 8 << 20

    @classmethod
    def from_table(cls, table: dict, path: object = "policy") -> NfqueueConfig:
        where = f"{path}: [nfqueue]"
        known = {"queues", "ports", "reject", "reject_mark", "malformed", "copy_range",
                 "queue_maxlen", "fail_open", "batch", "rcvbuf"}
        for key in table:
            if key not in known:
                raise PolicyError(f"{where}: unknown key {key!r}")
        cfg = cls()
        queues = table.get("queues", [0])
        if isinstance(queues, int):
            queues = [queues]
        if not queues or not all(isinstance(q, int) and 0 <= q <= 65535 for q in queues):
            raise PolicyError(f"{where}: queues must be a list of numbers 0..65535")
        cfg.queues = tuple(dict.fromkeys(queues))
        ports = table.get("ports", {})
        if not isinstance(ports, dict) or not ports:
            raise PolicyError(f"{where}: ports must map PORT (or ADDR:PORT) to a service name")
        for key, service in ports.items():
            if not isinstance(service, str) or not service:
                raise PolicyError(f"{where}: ports.{key}: service must be a non-empty string")
            addr, port = parse_port_key(key, f"{where} ports")
            if addr is None:
                cfg.ports[port] = service
            else:
                cfg.addr_ports[(addr, port)] = service
        for key, allowed in (("reject", ("drop", "reset")), ("malformed", ("drop", "accept"))):
            value = table.get(key, getattr(cfg, key))
            if value not in allowed:
                raise PolicyError(f"{where}: {key} must be one of {', '.join(allowed)}")
            setattr(cfg, key, value)
        for key, lo, hi in (("reject_mark", 1, 0xFFFFFFFF), ("copy_range", 64, 65535),
                            ("queue_maxlen", 1, 1 << 24), ("batch", 1, 4096),
                            ("rcvbuf", 0, 1 << 30)):
            value = table.get(key, getattr(cfg, key))
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise PolicyError(f"{where}: {key} must be a number {lo}..{hi}")
            setattr(cfg, key, value)
        fail_open = table.get("fail_open", True)
        if not isinstance(fail_open, bool):
            raise PolicyError(f"{where}: fail_open must be true or false")
        cfg.fail_open = fail_open
        return cfg


class NfqueueFrontDoor:
    """See the module's theory of operation."""

    def __init__(self, engine, config, clock=time.time, queue_factory=None):
        if isinstance(config, dict):
            config = NfqueueConfig.from_table(config)
        self.engine = engine
        self.config = config
        self.clock = clock
        self._queue_factory = queue_factory or self._open_queue
        self.queues: list = []
        self._loop = None
        self._names: dict[bytes, str] = {}
        deny = nfq.REJECT if config.reject == "reset" else nfq.DROP
        self._deny_code = deny
        self._malformed_code = _VERDICTS[config.malformed]
        # -- counters (docs/metrics.md acl_nfqueue_*) --
        self.packets: dict[int, int] = {q: 0 for q in config.queues}
        self.verdicts: dict[tuple[str, str, str], int] = {}
        self.batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.decode_errors = 0
        self.decode_error_codes: dict[str, int] = {}
        self.unmapped = 0
        self.engine_errors = 0
        self.io_errors = 0
        self.looped = 0           # marked packets that came back: REJECT rule missing

    # -- lifecycle -----------------------------------------------------
    def _open_queue(self, num: int):
        c = self.config
        return nfq.Queue(num, copy_range=c.copy_range, maxlen=c.queue_maxlen,
                         fail_open=c.fail_open, rcvbuf=c.rcvbuf, batch=c.batch)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind every queue and watch its fd on ``loop``; OSError if one cannot be bound."""
        loop = loop or asyncio.get_running_loop()
        try:
            for num in self.config.queues:
                q = self._queue_factory(num)
                self.queues.append(q)
                loop.add_reader(q.fileno(), self._on_readable, q)
        except BaseException:
            self.close()
            raise
        self._loop = loop
        log.info("nfqueue: bound queues %s", ", ".join(map(str, self.config.queues)))

    def close(self) -> None:
        """Stop reading and unbind; the kernel drops packets still unanswered."""
        for q in self.queues:
            try:
                if self._loop is not None:
                    self._loop.remove_reader(q.fileno())
            except (OSError, ValueError, RuntimeError):
                pass
            q.close()
        self.queues = []
        self._loop = None

    # -- the hot path --------------------------------------------------
    def _on_readable(self, q) -> None:
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            try:
                n = q.recv()
                if n == 0:
                    return
                verdicts = self.decide_records(q.num, q.records(n), n, q.stride)
                q.verdict(verdicts, self.config.reject_mark)
            except OSError as exc:
                self.io_errors += 1
                log.warning("nfqueue %d: %s", q.num, exc)
                return

    def service_for(self, dst: bytes, dport: int) -> str | None:
        if self.config.addr_ports:
            name = self.config.addr_ports.get((dst, dport))
            if name is not None:
                return name
        return self.config.ports.get(dport)

    def decide_records(self, queue: int, raw: bytes, n: int, stride: int) -> bytearray:
        """One verdict code per record of a batch (sans-IO: records in, codes out)."""
        verdicts = bytearray(n)          # DROP everywhere until decided
        requests = []
        where = []
        names = self._names
        ports = self.config.ports
        addr_ports = self.config.addr_ports
        unpack = nfq.RECORD.unpack_from
        hdr = nfq.RECORD_HEADER
        mark = self.config.reject_mark
        deny_is_reject = self._deny_code == nfq.REJECT
        for i in range(n):
            at = i * stride
            _pid, _hw, caplen, pkt_mark, wire = unpack(raw, at)
            if deny_is_reject and pkt_mark == mark:
                self.looped += 1             # came back marked: no REJECT rule
                continue
            try:
                _fam, src, dst, sport, dport, _proto, _flags = decode_raw(
                    raw, at + hdr, caplen, wire)
            except PacketError as exc:
                self.decode_errors += 1
                self.decode_error_codes[exc.code] = self.decode_error_codes.get(exc.code, 0) + 1
                verdicts[i] = self._malformed_code
                continue
            service = (addr_ports.get((dst, dport)) if addr_ports else None) or ports.get(dport)
            if service is None:
                self.unmapped += 1
                verdicts[i] = nfq.ACCEPT
                continue
            client = names.get(src)
            if client is None:
                client = str(ipaddress.ip_address(src))
                if len(names) >= 65536:
                    names.clear()
                names[src] = client
            server = names.get(dst)
            if server is None:
                server = str(ipaddress.ip_address(dst))
                names[dst] = server
            requests.append(Request(service, client, sport, server, dport))
            where.append(i)
        self.packets[queue] = self.packets.get(queue, 0) + n
        self.batch_counts[bisect_left(BATCH_BUCKETS, n)] += 1
        self.batch_sum += n
        if requests:
            decisions = self._decide(requests)
            counts = self.verdicts
            deny = self._deny_code
            for i, req, d in zip(where, requests, decisions, strict=True):
                if d is None:
                    verdicts[i] = self._malformed_code
                    k = (req.service, "deny", "error")
                else:
                    verdicts[i] = nfq.ACCEPT if d.verdict is not Verdict.DENY else deny
                    k = (req.service, _LABEL_VERDICT[d.verdict], _LABEL_REASON[d.reason])
                counts[k] = counts.get(k, 0) + 1
        return verdicts

    def _decide(self, requests: list) -> list:
        now = self.clock()
        try:
            return self.engine.decide_many(requests, now)
        except Exception:
            log.exception("nfqueue: engine failed on a batch; deciding one by one")
        out = []
        for r in requests:
            try:
                out.append(self.engine.decide(r, now))
            except Exception:
                self.engine_errors += 1
                out.append(None)
        return out

    # -- counters for metrics ------------------------------------------
    def queue_counters(self) -> dict[int, dict[str, int]]:
        """Per queue: packets, queue drops, user drops (kernel + ids never delivered)."""
        kernel = nfq.read_queue_stats()
        out = {}
        for num in self.config.queues:
            q = next((q for q in self.queues if q.num == num), None)
            st = kernel.get(num) if q is not None else None
            gaps = q.gaps if q is not None else 0
            out[num] = {
                "packets": self.packets.get(num, 0),
                "queue_drops": st.queue_dropped if st else 0,
                # Without fail-open the kernel counts a netlink loss and we see
                # the id gap: the larger of the two, never their sum.
                "user_drops": max(st.user_dropped if st else 0, gaps),
                "overruns": q.overruns if q is not None else 0,
                "waiting": st.queue_total if st else 0,
            }
        return out

    def batch_histogram(self) -> tuple[list[tuple[float, int]], int]:
        """Cumulative ``(le, count)`` buckets (last is +Inf) and the sum."""
        acc, out = 0, []
        for le, c in zip((*BATCH_BUCKETS, float("inf")), self.batch_counts, strict=True):
            acc += c
            out.append((le, acc))
        return out, self.batch_sum

    def metric_families(self):
        """The ``acl_nfqueue_*`` families, built from the counters now (a collector calls this)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        per_queue = self.queue_counters()
        packets = CounterMetricFamily("acl_nfqueue_packets", "packets read from NFQUEUE",
                                      labels=["queue"])
        qdrops = CounterMetricFamily("acl_nfqueue_queue_drops",
                                     "packets the kernel dropped (queue full)", labels=["queue"])
        udrops = CounterMetricFamily("acl_nfqueue_user_drops",
                                     "packets lost in netlink (socket buffer)", labels=["queue"])
        for num, c in sorted(per_queue.items()):
            packets.add_metric([str(num)], c["packets"])
            qdrops.add_metric([str(num)], c["queue_drops"])
            udrops.add_metric([str(num)], c["user_drops"])
        verdicts = CounterMetricFamily("acl_nfqueue_verdicts", "verdicts given to packets",
                                       labels=["service", "verdict", "reason"])
        for (service, verdict, reason), n in sorted(self.verdicts.items()):
            verdicts.add_metric([service, verdict, reason], n)
        buckets, total = self.batch_histogram()
        hist = HistogramMetricFamily("acl_nfqueue_batch_size", "packets handled per read batch",
                                     buckets=[(("+Inf" if le == float("inf") else str(le)), c)
                                              for le, c in buckets], sum_value=total)
        errors = CounterMetricFamily("acl_nfqueue_decode_errors",
                                     "malformed packets (default verdict given)")
        errors.add_metric([], self.decode_errors)
        return [packets, verdicts, hist, qdrops, udrops, errors]
