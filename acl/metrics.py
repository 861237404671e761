"""Prometheus metrics of ``acl serve``, read at scrape time (docs/metrics.md).

Rules of this file:

* Nothing here is called per decision.  :class:`AclCollector` reads the
  engine's and the server's plain counters when Prometheus scrapes and turns
  them into metric families with exactly the names, types and labels of
  docs/metrics.md (the deploy alert rules and dashboard use them).
* The registry is a parameter (:func:`make_registry` gives a fresh one); the
  process-global registry is never touched.
* Front doors that own metrics of their own (the NFQUEUE hook's
  ``acl_nfqueue_*``) are registered with :meth:`AclCollector.add_front_door`:
  any object with a ``collect_metrics()`` method returning metric families;
  the collector yields them with its own on every scrape.
* Rule counts come from each source's layer: ``layer.rule_counts()`` ->
  ``{"ipv4": n, "ipv6": n, "name": n}`` when the layer has it, else ``len()``
  of the layer counted as ``name`` (a layer that cannot say is not guessed).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from acl import __version__
from acl.model import Reason, Verdict

_VERDICT = {v.value: v.name.lower() for v in Verdict}
_REASON = {r.value: r.name.lower() for r in Reason}
LIMITS = ("cps", "per_source", "instances", "load", "time", "rate")
FAMILIES = ("ipv4", "ipv6", "name")


def make_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)


def _bump(out: dict, fam: str, n: int = 1) -> None:
    out[fam] = out.get(fam, 0) + n


def _hosts_access_counts(layer) -> dict[str, int]:
    out: dict[str, int] = {}
    for families in layer.shapes.families():
        if families is None:
            _bump(out, "name")
            continue
        for fam in sorted(families):
            _bump(out, "ipv4" if fam == 4 else "ipv6")
    return out


def _tcprules_counts(layer) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in layer._decisions:
        if not key or "@" in key or key.startswith("="):
            _bump(out, "name")
        elif ":" in key:
            _bump(out, "ipv6")
        else:
            _bump(out, "ipv4")
    return out


def _xinetd_counts(layer) -> dict[str, int]:
    out: dict[str, int] = {}
    for svc in layer.policy.entries():
        for lst in (svc.only_from, svc.no_access):
            for e in (lst.entries if lst is not None else ()):
                _bump(out, {"v4": "ipv4", "v6": "ipv6", "v6net": "ipv6"}.get(e.kind, "name"))
    return out


_COUNTERS = {"HostsAccessLayer": _hosts_access_counts, "TcprulesLayer": _tcprules_counts,
             "XinetdLayer": _xinetd_counts}


def rule_counts(layer) -> dict[str, int]:
    """``{family: rules}`` of one layer (the module rules say how)."""
    fn = getattr(layer, "rule_counts", None)
    if fn is not None:
        return dict(fn())
    adapter = _COUNTERS.get(type(layer).__name__)
    if adapter is not None:
        try:
            return adapter(layer)
        except AttributeError:
            return {}
    try:
        return {"name": len(layer)}
    except TypeError:
        return {}


class AclCollector:
    """Engine + server counters -> metric families, at scrape time."""

    def __init__(self, engine, server=None, implementation: str = "compiled") -> None:
        self.engine = engine
        self.server = server
        self.implementation = implementation
        self._front_doors: list = []

    def add_front_door(self, door) -> None:
        self._front_doors.append(door)

    def describe(self):
        return []

    def collect(self):
        c = self.engine.counters()
        m = CounterMetricFamily("acl_decisions", "Decisions made, all front doors",
                                labels=["service", "verdict", "reason"])
        for (service, verdict, reason), n in sorted(c["decisions"].items()):
            m.add_metric([service, _VERDICT.get(verdict, str(verdict)),
                          _REASON.get(reason, str(reason))], n)
        yield m

        h = HistogramMetricFamily("acl_decision_latency_seconds",
                                  "Time from request decoded to reply encoded")
        cum = 0
        buckets = []
        for bound, n in zip(c["latency_buckets"], c["latency_counts"], strict=False):
            cum += n
            buckets.append((repr(float(bound)), cum))
        cum += c["latency_counts"][-1]
        buckets.append(("+Inf", cum))
        h.add_metric([], buckets, sum_value=c["latency_sum"])
        yield h

        g = GaugeMetricFamily("acl_policy_rules", "Compiled rules by source and family",
                              labels=["source", "family"])
        totals: dict[tuple[str, str], int] = {}
        for src in self.engine.policy.sources:
            for fam, n in rule_counts(src.layer).items():
                k = (src.kind, fam)
                totals[k] = totals.get(k, 0) + n
        for (kind, fam), n in sorted(totals.items()):
            g.add_metric([kind, fam], n)
        yield g

        r = CounterMetricFamily("acl_reloads", "Policy reloads", labels=["result"])
        for result in ("success", "failure"):
            r.add_metric([result], c["reloads"].get(result, 0))
        yield r
        yield GaugeMetricFamily("acl_last_reload_timestamp_seconds",
                                "When the running policy was loaded", value=c["last_reload"])
        yield GaugeMetricFamily("acl_last_reload_success",
                                "1 if the last reload attempt succeeded",
                                value=c["last_reload_success"])

        le = GaugeMetricFamily("acl_leases_active", "Live leases", labels=["service"])
        for service, n in sorted(c["leases"].items()):
            le.add_metric([service], n)
        yield le
        yield GaugeMetricFamily("acl_sources_tracked", "Entries in the bounded per-source table",
                                value=c["sources_tracked"])
        yield CounterMetricFamily("acl_sources_evictions",
                                  "Entries evicted from the per-source table",
                                  value=c["sources_evictions"])
        ov = c["lease_overflow"]
        yield GaugeMetricFamily("acl_lease_overflow_entries",
                                "Sources whose leases are counted in the overflow area",
                                value=ov["entries"])
        yield CounterMetricFamily("acl_lease_overflows",
                                  "Sources moved to the overflow area (table group full)",
                                  value=ov["overflows"])
        yield CounterMetricFamily("acl_lease_overflow_full",
                                  "per_source refusals and leases counted for instances only: "
                                  "the overflow area was full", value=ov["full"])

        t = CounterMetricFamily("acl_limit_trips", "Refusals by a limit",
                                labels=["service", "limit"])
        for (service, limit), n in sorted(c["limit_trips"].items()):
            t.add_metric([service, limit], n)
        yield t

        pe = CounterMetricFamily("acl_protocol_errors", "Bad frames / requests",
                                 labels=["protocol", "code"])
        cl = GaugeMetricFamily("acl_clients_connected", "Open client connections",
                               labels=["protocol"])
        if self.server is not None:
            for (proto, code), n in sorted(self.server.protocol_errors.items()):
                pe.add_metric([proto, str(code)], n)
            for proto, n in sorted(self.server.clients.items()):
                cl.add_metric([proto], n)
        yield pe
        yield cl
        ae = CounterMetricFamily("acl_accept_errors", "accept() wake-ups that failed for lack "
                                 "of descriptors (retried a second later)",
                                 labels=["socket", "errno"])
        if self.server is not None:
            for (sock, code), n in sorted(self.server.accept_stats.errors.items()):
                ae.add_metric([sock, code], n)
        yield ae

        names = getattr(self.engine.policy, "name_service", None)
        nl = CounterMetricFamily("acl_name_lookups", "Client name lookups made (cache misses)",
                                 labels=["kind"])
        for kind in ("verified", "ptr"):
            nl.add_metric([kind], names.lookups[kind] if names is not None else 0)
        yield nl
        yield GaugeMetricFamily("acl_name_cache_entries", "Client names cached",
                                value=names.entries if names is not None else 0)
        nu = CounterMetricFamily("acl_name_lookups_unanswered",
                                 "Names a decision went without (decided as unknown)",
                                 labels=["why"])
        unanswered = self.server.names_unanswered if self.server is not None else {}
        for why in ("deadline", "shed", "error"):
            nu.add_metric([why], unanswered.get(why, 0))
        yield nu
        sched = self.server.lookup_scheduler if self.server is not None else None
        yield GaugeMetricFamily("acl_name_lookups_running",
                                "Name lookups started (in a thread, or waiting for a free one)",
                                value=sched.running if sched is not None else 0)
        yield GaugeMetricFamily("acl_name_lookups_waiting",
                                "Name lookups waiting for their client network's per_network",
                                value=sched.waiting if sched is not None else 0)

        store = getattr(self.server, "lease_store", None)
        st = store.stats() if store is not None else {}
        kept = GaugeMetricFamily("acl_lease_store_kept",
                                 "Kept across a restart now ([run] keep_leases)",
                                 labels=["kind"])
        adopted = GaugeMetricFamily("acl_lease_store_adopted",
                                    "Adopted from systemd's fd store at this start",
                                    labels=["kind"])
        for kind in ("connections", "leases"):
            kept.add_metric([kind], st.get(kind, 0))
            adopted.add_metric([kind], st.get(f"adopted_{kind}", 0))
        yield kept
        yield adopted
        yield CounterMetricFamily("acl_lease_store_unkept",
                                  "Leases granted but not kept: the store was full",
                                  value=st.get("unkept", 0))
        yield GaugeMetricFamily("acl_lease_store_dropped_records",
                                "Journal records dropped at this start (damaged or orphaned)",
                                value=st.get("dropped_records", 0))

        sessions = self.server.postfix_sessions if self.server is not None else None
        yield GaugeMetricFamily("acl_postfix_sessions",
                                "SMTP sessions the Postfix door remembers",
                                value=len(sessions) if sessions is not None else 0)
        yield CounterMetricFamily("acl_postfix_sessions_forgotten",
                                  "Sessions dropped for room before they went idle",
                                  value=sessions.forgotten if sessions is not None else 0)

        info = InfoMetricFamily("acl_core", "Which core runs")
        info.add_metric([], {"implementation": self.implementation, "version": __version__})
        yield info

        for door in self._front_doors:
            yield from door.collect_metrics()
