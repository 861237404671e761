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
* Two paths decide a batch, with the same result (tests/nfq/test_fastpath.py
  holds them equal).  With the engine's compiled batch plan
  (``engine.plan``), the whole batch stays in C: ``acl._nfq`` decodes the
  packets (the C twin of acl.wire.packet), writes one binary-protocol
  DECIDE frame per packet to decide, the plan answers them in one nogil
  loop (sharing the engine's per-source token buckets), and ``acl._nfq``
  turns the DECISION frames into verdict codes and counts them.  A frame
  the plan cannot answer (a service whose layers need more than the
  address) is decided by ``engine.decide`` on a Request the Python codec
  builds.  ``acl._nfq`` takes any input without reading or writing past a
  buffer (ext/nfq_build.py's rules): a packet sent to the plan has the
  ``malformed`` verdict until its answer comes, an answer that names no
  waiting packet of the batch is counted in ``internal_errors`` and logged,
  and a batch whose numbers do not fit its buffers gets the ``malformed``
  verdict whole.  Without a plan (pure engine), every packet takes the
  Python path (:meth:`NfqueueFrontDoor.decide_records`).
* A packet whose decision needs a client name that is not cached (hosts_access
  name rules, xinetd host names: acl.names) is *held*: it gets no verdict
  with its batch (``nfq.HOLD``), the server looks the name up in a worker
  thread (:meth:`acl.serve.server.Server.look_up_names`, the same one the
  Unix sockets use), and the packet is decided and answered alone with the
  answer fetched (``NameService.answers``; the cache may have dropped it).  So a slow resolver delays only the packets that need
  it; the loop, the Unix sockets and other packets go on.  Held packets sit
  in the kernel's queue, so ``queue_maxlen`` bounds them.  Without a server
  (``look_up`` unset) names are looked up in line, as the engine does.
* A verdict the kernel refuses (EPERM once CAP_NET_ADMIN is gone, say)
  comes back later as a netlink error: counted per queue and logged (at
  most every ``WARN_EVERY`` seconds), since the packets it leaves waiting
  fill the queue and then fail open or are dropped.  A batch whose verdict
  cannot be sent at all gets the ``malformed`` verdict for everything read.
* The kernel's own counters (``/proc/net/netfilter/nfnetlink_queue``) are
  read through a file opened at start, while still root
  (:class:`acl.nfq.QueueStatsFile`); if it cannot be opened they are left
  out and that is logged once.
* Counters are plain ints and dicts, read at scrape time
  (:meth:`NfqueueFrontDoor.metric_families`, docs/metrics.md names).
* ``acl serve`` starts the door with :func:`start_for_server` on its running
  loop.  Binding a queue and every verdict need CAP_NET_ADMIN: the process
  keeps it alone when ``[run] user`` drops privileges
  (Server.drop_privileges, acl/serve/capabilities.py).  The port map is read at start; a
  reload changes the rules the engine applies, not the queues or the map.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from bisect import bisect_left

from acl import nfq
from acl.errors import SandboxError
from acl.model import Reason, Request, Verdict
from acl.nfqueue_config import (  # noqa: F401  (the door's configuration; importers use it from here too)
    DEFAULT_REJECT_MARK,
    NfqueueConfig,
    parse_port_key,
)
from acl.wire.packet import PacketError, address_text, decode_raw

log = logging.getLogger("acl.serve.nfqueue")

MAX_BATCHES_PER_WAKEUP = 16
#: Seconds between two log lines about verdicts the kernel refused.
WARN_EVERY = 10.0
#: Buckets of ``acl_nfqueue_batch_size``.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_VERDICTS = {"drop": nfq.DROP, "accept": nfq.ACCEPT}
_LABEL_VERDICT = {v: v.name.lower() for v in Verdict}
_LABEL_REASON = {r: r.name.lower() for r in Reason}
_REASONS = {int(r) for r in Reason}


class NfqueueFrontDoor:
    """See the module's theory of operation."""

    def __init__(self, engine, config, clock=time.time, queue_factory=None):
        if isinstance(config, dict):
            config = NfqueueConfig.from_table(config)
        self.engine = engine
        self.config = config
        self.clock = clock
        # None: _open_queue (a bound method kept here would be a cycle that
        # holds the engine, and its tables, until the cyclic GC runs)
        self._queue_factory = queue_factory
        self.queues: list = []
        self._loop = None
        self._names: dict[bytes, str] = {}
        deny = nfq.REJECT if config.reject == "reset" else nfq.DROP
        self._deny_code = deny
        self._malformed_code = _VERDICTS[config.malformed]
        self._batch = None
        if nfq.AVAILABLE:
            names = sorted({*config.ports.values(), *config.addr_ports.values()})
            self._batch = nfq.DoorBatch(config.batch, names, config.ports, config.addr_ports)
        # -- counters (docs/metrics.md acl_nfqueue_*); the C path keeps its own --
        self.packets: dict[int, int] = {q: 0 for q in config.queues}
        self._verdicts: dict[tuple[str, str, str], int] = {}
        self.batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self._decode_errors: dict[str, int] = {}
        self._unmapped = 0
        self._looped = 0          # marked packets that came back: REJECT rule missing
        self.engine_errors = 0
        self.internal_errors = 0
        self.io_errors = 0
        self.fast_batches = 0
        self.residual = 0         # frames the plan left to engine.decide
        self._bad_replies_seen = 0    # the C path's count when last looked at
        # -- held packets (see the theory) --
        self.look_up = None       # Server.look_up_names, set by start_for_server
        self._held: dict[int, dict[int, Request]] = {}   # queue -> {packet id: request}
        self.held_total = 0       # packets ever held
        self.held_batches = 0     # batch verdicts sent while a packet was held
        self.monotonic = time.monotonic   # for the pacing of log lines
        self._stats_file = None   # nfq.QueueStatsFile, opened by start()
        self._stats_warned = False
        self._nlerrors_seen: dict[int, int] = {}
        self._nlerrors_logged_at: dict[int, float] = {}

    # -- lifecycle -----------------------------------------------------
    def _open_queue(self, num: int):
        c = self.config
        return nfq.Queue(num, copy_range=c.copy_range, maxlen=c.queue_maxlen,
                         fail_open=c.fail_open, rcvbuf=c.rcvbuf, batch=c.batch)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind every queue and watch its fd on ``loop``; OSError if one cannot
        be bound, SandboxError if no netlink socket may be opened at all
        (EAFNOSUPPORT: an address-family filter such as acl.service's
        RestrictAddressFamilies=AF_UNIX; restarting would never help)."""
        loop = loop or asyncio.get_running_loop()
        try:
            for num in self.config.queues:
                q = (self._queue_factory or self._open_queue)(num)
                self.queues.append(q)
                loop.add_reader(q.fileno(), self._on_readable, q)
        except OSError as exc:
            self.close()
            if exc.errno != errno.EAFNOSUPPORT:
                raise
            raise SandboxError(
                f"{exc.strerror}: this process may not open netlink sockets (under "
                "systemd, a policy with [nfqueue] runs in acl-nfqueue.service; "
                "acl.service allows AF_UNIX only)") from None
        except BaseException:
            self.close()
            raise
        # after binding: the file exists once the first queue loaded the module
        self._stats_file = nfq.QueueStatsFile()
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
        self._held.clear()        # the kernel drops them with the queue
        if self._stats_file is not None:
            self._stats_file.close()
            self._stats_file = None

    # -- the hot path --------------------------------------------------
    def _on_readable(self, q) -> None:
        try:
            for _ in range(MAX_BATCHES_PER_WAKEUP):
                try:
                    n = q.recv()
                except OSError as exc:
                    self.io_errors += 1
                    log.warning("nfqueue %d: %s", q.num, exc)
                    return
                if n == 0:
                    return
                try:
                    verdicts = self._decide_batch(q, n)
                    held = self._held.get(q.num)
                    # the oldest held id (ids are in arrival order; they wrap at 2**32)
                    q.verdict(verdicts, self.config.reject_mark, next(iter(held)) if held else -1)
                    if held:
                        self.held_batches += 1
                except Exception as exc:
                    # Unanswered, the batch would wait for the next batch verdict and get
                    # that batch's answer: answer it (and anything held) by default now.
                    if isinstance(exc, OSError):
                        self.io_errors += 1
                        log.warning("nfqueue %d: %s", q.num, exc)
                    else:
                        self.internal_errors += 1
                        log.exception("nfqueue %d: answering a batch failed", q.num)
                    self._answer_all_by_default(q)
                    return
        finally:
            self._check_refused(q)

    def _answer_all_by_default(self, q) -> None:
        """The ``malformed`` verdict for every packet of ``q`` read and unanswered."""
        self._held.pop(q.num, None)
        try:
            q.verdict_all(self._malformed_code)
        except OSError as exc:
            self.io_errors += 1
            log.warning("nfqueue %d: %s", q.num, exc)

    def _check_refused(self, q) -> None:
        """Log verdicts the kernel refused since the last look (see the theory)."""
        n = q.netlink_errors
        seen = self._nlerrors_seen.get(q.num, 0)     # the count the last log line gave
        if n == seen:
            return
        now = self.monotonic()
        if now - self._nlerrors_logged_at.get(q.num, -WARN_EVERY) >= WARN_EVERY:
            self._nlerrors_logged_at[q.num] = now
            self._nlerrors_seen[q.num] = n
            code = q.last_netlink_error
            log.error("nfqueue %d: the kernel refused %d verdict(s) (%d in all; last: %s); "
                      "unanswered packets fill the queue, then %s", q.num, n - seen, n,
                      os.strerror(code) if code else "?",
                      "pass (fail_open)" if self.config.fail_open else "are dropped")

    def _decide_batch(self, q, n: int) -> bytearray:
        plan = getattr(self.engine, "plan", None)
        try:
            if plan is not None and self._batch is not None:
                return self.decide_fast(q.num, q.record_pointer(), n, q.stride, plan)
            return self.decide_records(q.num, q.records(n), n, q.stride)
        except Exception:
            # A bug must not stop the door: log it, answer the batch by default
            # (packets it held are answered with it: none stays held).
            self.internal_errors += 1
            log.exception("nfqueue %d: batch of %d failed; default verdict given", q.num, n)
            self._held.pop(q.num, None)
            return bytearray([self._malformed_code]) * n

    def decide_fast(self, queue: int, records, n: int, stride: int, plan) -> bytearray:
        """The compiled path (see the theory): records in, verdict codes out."""
        verdicts = bytearray(n)
        frames, count = self._batch.frames(records, n, stride, verdicts, self._malformed_code,
                                           self._deny_code == nfq.REJECT,
                                           self.config.reject_mark)
        self.packets[queue] = self.packets.get(queue, 0) + n
        self.batch_counts[bisect_left(BATCH_BUCKETS, n)] += 1
        self.batch_sum += n
        self.fast_batches += 1
        if not count:
            return verdicts
        now = self.clock()
        view = memoryview(frames)
        end = len(view)
        pos = 0
        deny = self._deny_code
        while pos < end:
            pos, replies, status = plan.run(view, pos, now)
            if replies:
                self._batch.apply(replies, verdicts, deny)
            if status == 1:
                # One frame for Python: decide its packet the slow way.
                rid = int.from_bytes(view[pos + 8: pos + 12], "little")
                length = int.from_bytes(view[pos: pos + 4], "little")
                self.residual += 1
                self._decide_one(queue, records, rid, stride, verdicts, now)
                pos += 4 + length
            elif status != 2:
                break
        bad = self._batch.bad_replies
        if bad != self._bad_replies_seen:
            # The plan answered no packet of ours: a bug, not a packet's doing.
            # Those packets keep the malformed verdict acl._nfq gave them.
            self.internal_errors += bad - self._bad_replies_seen
            log.error("nfqueue %d: %d answer(s) of the batch plan matched no packet of "
                      "the batch; left unanswered packets got the malformed verdict",
                      queue, bad - self._bad_replies_seen)
            self._bad_replies_seen = bad
        return verdicts

    def _decide_one(self, queue: int, records, i: int, stride: int, verdicts: bytearray,
                    now: float) -> None:
        raw = bytes(memoryview(records)[i * stride: (i + 1) * stride])
        pid, _hw, caplen, _mark, wire = nfq.RECORD.unpack_from(raw, 0)
        _fam, src, dst, sport, dport, _proto, _flags = decode_raw(
            raw, nfq.RECORD_HEADER, caplen, wire)
        service = self.service_for(dst, dport)
        req = Request(service, address_text(src), sport, address_text(dst), dport)
        if self._hold_for_names(queue, pid, req, now):
            verdicts[i] = nfq.HOLD
            return
        d = self._decide([req])[0]
        self._count(req, d, verdicts, i)

    # -- held packets ----------------------------------------------------
    def _hold_for_names(self, queue: int, pid: int, req: Request, now: float) -> bool:
        """Hold the packet if deciding it needs names not cached; True if held."""
        if self.look_up is None:
            return False
        try:
            wanted = self.engine.name_lookups(req, now)
        except Exception:
            log.exception("nfqueue: probing %s for names failed", req.client)
            return False
        if not wanted:
            return False
        self._held.setdefault(queue, {})[pid] = req
        self.held_total += 1
        self.look_up(wanted).add_done_callback(
            lambda fut: self._release(queue, pid, fut))
        return True

    def _release(self, queue: int, pid: int, fut=None) -> None:
        """The names of a held packet are looked up: decide it and answer it."""
        held = self._held.get(queue)
        req = held.pop(pid, None) if held else None
        if req is None:
            return                      # its queue was closed meanwhile
        if not held:
            del self._held[queue]
        q = next((q for q in self.queues if q.num == queue), None)
        if q is None:
            return
        code = bytearray(1)
        with self.engine.with_fetched(fut):     # what was fetched for this packet
            d = self._decide([req])[0]
        self._count(req, d, code, 0)
        try:
            q.verdict_one(pid, code[0], self.config.reject_mark)
        except OSError as exc:
            self.io_errors += 1
            log.warning("nfqueue %d: %s", queue, exc)

    @property
    def held(self) -> int:
        """Packets waiting now for a client name lookup."""
        return sum(len(h) for h in self._held.values())

    def _count(self, req, d, verdicts: bytearray, i: int) -> None:
        if d is None:
            verdicts[i] = self._malformed_code
            k = (req.service, "deny", "error")
        else:
            verdicts[i] = nfq.ACCEPT if d.verdict is not Verdict.DENY else self._deny_code
            k = (req.service, _LABEL_VERDICT[d.verdict], _LABEL_REASON[d.reason])
        self._verdicts[k] = self._verdicts.get(k, 0) + 1

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
        hold = self.look_up is not None and self.engine.policy.name_service is not None
        now = self.clock()
        room = stride - hdr
        for i in range(n):
            at = i * stride
            pid, _hw, caplen, pkt_mark, wire = unpack(raw, at)
            if deny_is_reject and pkt_mark == mark:
                self._looped += 1            # came back marked: no REJECT rule
                continue
            try:
                if caplen > room:            # as acl._nfq says: cut short
                    raise PacketError("truncated", "capture extends past its record")
                _fam, src, dst, sport, dport, _proto, _flags = decode_raw(
                    raw, at + hdr, caplen, wire)
            except PacketError as exc:
                self._decode_errors[exc.code] = self._decode_errors.get(exc.code, 0) + 1
                verdicts[i] = self._malformed_code
                continue
            service = (addr_ports.get((dst, dport)) if addr_ports else None) or ports.get(dport)
            if service is None:
                self._unmapped += 1
                verdicts[i] = nfq.ACCEPT
                continue
            # the addresses as inet_ntop writes them, as the Unix sockets'
            # doors get them: a v4-mapped source is ::ffff:a.b.c.d, which the
            # rule languages read as the IPv4 address (``str(ipaddress)``
            # before Python 3.13 writes ::ffff:a01:101, which no IPv4 rule covers)
            client = names.get(src)
            if client is None:
                client = address_text(src)
                if len(names) >= 65536:
                    names.clear()
                names[src] = client
            server = names.get(dst)
            if server is None:
                server = address_text(dst)
                names[dst] = server
            req = Request(service, client, sport, server, dport)
            if hold and self._hold_for_names(queue, pid, req, now):
                verdicts[i] = nfq.HOLD
                continue
            requests.append(req)
            where.append(i)
        self.packets[queue] = self.packets.get(queue, 0) + n
        self.batch_counts[bisect_left(BATCH_BUCKETS, n)] += 1
        self.batch_sum += n
        if requests:
            for i, req, d in zip(where, requests, self._decide(requests), strict=True):
                self._count(req, d, verdicts, i)
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
    @property
    def verdicts(self) -> dict[tuple[str, str, str], int]:
        """{(service, verdict label, reason label): n}, both paths."""
        out = dict(self._verdicts)
        if self._batch is not None:
            for (service, v, r), n in self._batch.counts().items():
                k = (service, _LABEL_VERDICT[Verdict(v)],
                     _LABEL_REASON[Reason(r)] if r in _REASONS else str(r))
                out[k] = out.get(k, 0) + n
        return out

    @property
    def decode_error_codes(self) -> dict[str, int]:
        out = dict(self._decode_errors)
        if self._batch is not None:
            for code, n in self._batch.errors().items():
                out[code] = out.get(code, 0) + n
        return out

    @property
    def decode_errors(self) -> int:
        return sum(self.decode_error_codes.values())

    @property
    def unmapped(self) -> int:
        return self._unmapped + (self._batch.unmapped if self._batch is not None else 0)

    @property
    def looped(self) -> int:
        return self._looped + (self._batch.looped if self._batch is not None else 0)

    def _kernel_stats(self) -> dict | None:
        """The kernel's counters per queue; None when they cannot be read."""
        reader = self._stats_file
        if reader is None:
            return None          # no queue bound (before start, after close): nothing to read
        kernel = reader.read()
        if kernel is None:
            if not self._stats_warned:
                self._stats_warned = True
                log.warning("nfqueue: cannot read %s (%s): the kernel's queue counters "
                            "are left out", reader.path, reader.error)
        return kernel

    def queue_counters(self) -> dict[int, dict[str, int | None]]:
        """Per queue: packets, queue drops, user drops (kernel + ids never
        delivered).  ``queue_drops`` and ``waiting`` are the kernel's alone:
        None when its counters cannot be read (left out of the metrics, not
        shown as 0, which would hide drops)."""
        kernel = self._kernel_stats()
        unread = kernel is None
        out = {}
        for num in self.config.queues:
            q = next((q for q in self.queues if q.num == num), None)
            st = kernel.get(num) if q is not None and not unread else None
            gaps = q.gaps if q is not None else 0
            out[num] = {
                "packets": self.packets.get(num, 0),
                "queue_drops": None if unread else st.queue_dropped if st else 0,
                # Without fail-open the kernel counts a netlink loss and we see
                # the id gap: the larger of the two, never their sum.
                "user_drops": max(st.user_dropped if st else 0, gaps),
                "overruns": q.overruns if q is not None else 0,
                "waiting": st.queue_total if st else None,
                "refused_verdicts": q.netlink_errors if q is not None else 0,
            }
        return out

    def batch_histogram(self) -> tuple[list[tuple[float, int]], int]:
        """Cumulative ``(le, count)`` buckets (last is +Inf) and the sum."""
        acc, out = 0, []
        for le, c in zip((*BATCH_BUCKETS, float("inf")), self.batch_counts, strict=True):
            acc += c
            out.append((le, acc))
        return out, self.batch_sum

    def collect_metrics(self):
        """What acl.metrics.AclCollector asks a front door for."""
        return self.metric_families()

    def metric_families(self):
        """The ``acl_nfqueue_*`` families, built from the counters now (a collector calls this)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        per_queue = self.queue_counters()
        packets = CounterMetricFamily("acl_nfqueue_packets", "packets read from NFQUEUE",
                                      labels=["queue"])
        qdrops = CounterMetricFamily("acl_nfqueue_queue_drops",
                                     "packets the kernel dropped (queue full)", labels=["queue"])
        udrops = CounterMetricFamily("acl_nfqueue_user_drops",
                                     "packets lost in netlink (socket buffer)", labels=["queue"])
        waiting = GaugeMetricFamily("acl_nfqueue_waiting",
                                    "packets in the queue waiting for a verdict now",
                                    labels=["queue"])
        refused = CounterMetricFamily("acl_nfqueue_refused_verdicts",
                                      "verdicts the kernel refused", labels=["queue"])
        for num, c in sorted(per_queue.items()):
            packets.add_metric([str(num)], c["packets"])
            if c["queue_drops"] is not None:
                qdrops.add_metric([str(num)], c["queue_drops"])
            udrops.add_metric([str(num)], c["user_drops"])
            refused.add_metric([str(num)], c["refused_verdicts"])
            if c["waiting"] is not None:
                waiting.add_metric([str(num)], c["waiting"])
        maxlen = GaugeMetricFamily("acl_nfqueue_queue_maxlen",
                                   "packets a queue holds before it fails open or drops")
        maxlen.add_metric([], self.config.queue_maxlen)
        unmapped = CounterMetricFamily("acl_nfqueue_unmapped",
                                       "packets to no mapped port (accepted)")
        unmapped.add_metric([], self.unmapped)
        looped = CounterMetricFamily("acl_nfqueue_looped",
                                     "refused packets back with the reject mark: no REJECT "
                                     "rule answered them (dropped)")
        looped.add_metric([], self.looped)
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
        held = GaugeMetricFamily("acl_nfqueue_held_packets",
                                 "packets waiting for a client name lookup")
        held.add_metric([], self.held)
        return [packets, verdicts, hist, qdrops, udrops, errors, held, waiting, maxlen, refused,
                unmapped, looped]


def start_for_server(server, loop: asyncio.AbstractEventLoop | None = None):
    """Start the front door for an ``acl.serve.server.Server`` if its policy has ``[nfqueue]``.

    Call it on the server's running loop, after binding (queues need
    CAP_NET_ADMIN for as long as they are used); it registers the door's
    metrics with the server's collector.  Returns the door (close it on
    stop) or None when the policy has no ``[nfqueue]`` table.  Raises
    PolicyError for a bad table, OSError when a queue cannot be bound.
    """
    policy = server.engine.policy
    table = getattr(policy, "nfqueue", None)
    if not table:
        return None
    door = NfqueueFrontDoor(server.engine, NfqueueConfig.from_table(table, policy.path))
    door.look_up = server.look_up_names
    door.start(loop)
    server.add_front_door(door)
    return door
