"""docs/metrics.md is what ``acl serve`` exports, and every metric the other
docs and deploy/ name is one of docs/metrics.md's, with labels it has.

* Exported -> documented, and back: the families of the real collector
  (acl.metrics.AclCollector, through a real ``Server`` on the shipped example
  policy) and of the real NFQUEUE front door, with their types and label
  names, against the table's rows (tests/doc_metrics.py reads them).  No
  socket is bound: a family's label names are known before it has a sample.
* Label values the table lists are the ones the code gives: the enums and
  constants the collector labels with, or, for a label every scrape shows
  with each of its values, those samples.
* Every ``acl_...`` name in README.md, docs/*.md, the alert rules and the
  dashboard is a documented family (or a histogram's ``_bucket``/``_sum``/
  ``_count``), and every ``{label...}`` written after one names its labels
  (``{service,limit}``) or selects documented values (``{verdict="deny"}``).
  Prometheus's own target labels (``job``, ``instance``) and ``le`` pass.

The live tests scrape the same names from a running sidecar
(tests/serve/test_prometheus_live.py, tests/deploy/test_prometheus.py).
Each check is a function returning its complaints, run here on the real
files and, once, on a planted mistake, so each can be seen to fail.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from tests.doc_metrics import ROOT, metrics_table, scraped_name

TARGET_LABELS = {"job", "instance", "le"}
#: ``acl_...`` words in the docs that are no metric: the nft table the
#: NFQUEUE rules script makes (docs/nfqueue.md).
NOT_METRICS = {"acl_nfqueue"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported_families():
    """The real collector's families and the NFQUEUE door's, as objects."""
    from acl.engine import Engine
    from acl.nfqueue_config import NfqueueConfig
    from acl.policy import EXAMPLE, load_policy
    from acl.serve.nfqueue import NfqueueFrontDoor
    from acl.serve.server import Server

    engine = Engine(load_policy(EXAMPLE))
    server = Server(engine, compiled=True)
    door = NfqueueFrontDoor(engine, NfqueueConfig.from_table({"ports": {"22": "sshd"}}))
    return server, [*server.collector.collect(), *door.metric_families()]


@pytest.fixture(scope="module")
def exported():
    return _exported_families()


def family_shapes(families) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{scraped name: (docs' type, label names)}`` of metric families."""
    out = {}
    for f in families:
        if f.type == "info":          # labels live in its one sample
            out[scraped_name(f.name, "info")] = ("gauge (info)", tuple(f.samples[0].labels))
        else:
            out[scraped_name(f.name, f.type)] = (f.type, tuple(f._labelnames))
    return out


def table_mismatches(shapes, table) -> list[str]:
    wrong = [f"{n}: exported, not in docs/metrics.md" for n in sorted(set(shapes) - set(table))]
    wrong += [f"{n}: in docs/metrics.md, not exported" for n in sorted(set(table) - set(shapes))]
    for name in sorted(set(shapes) & set(table)):
        kind, labels = shapes[name]
        row = table[name]
        if row.kind != kind:
            wrong.append(f"{name}: type {kind}, documented {row.kind}")
        if list(row.labels) != list(labels):
            wrong.append(f"{name}: labels {list(labels)}, documented {list(row.labels)}")
    return wrong


def test_every_exported_family_is_documented_with_its_type_and_labels(exported):
    _server, families = exported
    shapes = family_shapes(families)
    assert len(shapes) == 40
    assert table_mismatches(shapes, metrics_table()) == []


def test_a_family_missing_from_the_table_or_mislabelled_is_found(exported):
    _server, families = exported
    text = (ROOT / "docs" / "metrics.md").read_text()
    planted = text.replace("| `acl_sources_tracked` |", "| `acl_sources_trackd` |")
    planted = planted.replace("| `acl_leases_active` | gauge | `service` |",
                              "| `acl_leases_active` | counter | `service`, `queue` |")
    assert planted != text
    wrong = table_mismatches(family_shapes(families), metrics_table(planted))
    assert wrong == ["acl_sources_tracked: exported, not in docs/metrics.md",
                     "acl_sources_trackd: in docs/metrics.md, not exported",
                     "acl_leases_active: type gauge, documented counter",
                     "acl_leases_active: labels ['service'], documented ['service', 'queue']"]


def code_label_values(server, families) -> dict[tuple[str, str], set[str]]:
    """``{(family, label): values}`` the code gives, where it gives a fixed set."""
    from acl import metrics, policy
    from acl.model import Reason, Verdict
    from acl.serve import accept, systemd

    verdicts = {v.name.lower() for v in Verdict}
    reasons = {r.name.lower() for r in Reason}
    out = {
        ("acl_decisions_total", "verdict"): verdicts,
        ("acl_decisions_total", "reason"): reasons,
        ("acl_nfqueue_verdicts_total", "verdict"): verdicts,
        ("acl_nfqueue_verdicts_total", "reason"): reasons,
        ("acl_policy_rules", "source"): set(policy.SOURCE_KEYS),
        ("acl_policy_rules", "family"): set(metrics.FAMILIES),
        ("acl_limit_trips_total", "limit"): set(metrics.LIMITS),
        ("acl_accept_errors_total", "socket"): set(systemd.ORDER),
        ("acl_accept_errors_total", "errno"): {errno.errorcode[e] for e in accept.EXHAUSTED},
        ("acl_protocol_errors_total", "protocol"): set(server.clients),
        ("acl_clients_connected", "protocol"): set(server.clients),
    }
    # Labels every scrape shows with each of their values, from the start.
    for f in families:
        name = scraped_name(f.name, f.type)
        if name in ("acl_reloads_total", "acl_name_lookups_total",
                    "acl_name_lookups_unanswered_total", "acl_lease_store_kept",
                    "acl_lease_store_adopted"):
            (label,) = f._labelnames
            out[(name, label)] = {s.labels[label] for s in f.samples}
    return out


def value_mismatches(code_values, table) -> list[str]:
    wrong = []
    for (name, label), values in sorted(code_values.items()):
        documented = table[name].labels.get(label)
        if documented != values:
            wrong.append(f"{name}{{{label}}}: the code gives {sorted(values)}, "
                         f"documented {sorted(documented) if documented else documented}")
    return wrong


def test_listed_label_values_are_the_code_s(exported):
    server, families = exported
    values = code_label_values(server, families)
    assert len(values) >= 16
    assert value_mismatches(values, metrics_table()) == []


def test_a_wrong_list_of_label_values_is_found(exported):
    server, families = exported
    text = (ROOT / "docs" / "metrics.md").read_text()
    planted = text.replace("`load`, `time`, `rate`)", "`load`, `time`)")
    assert planted != text
    wrong = value_mismatches(code_label_values(server, families), metrics_table(planted))
    assert len(wrong) == 1 and wrong[0].startswith("acl_limit_trips_total{limit}"), wrong


# -- names in the other docs and in deploy/ ------------------------------------

#: a metric name, and the ``{...}`` right after it (a selector, or the docs'
#: ``{label,label}`` shorthand)
_MENTION = re.compile(r"\b(acl_[a-z0-9_]+)(\*)?(\{[^{}]*\})?")
_MATCHER = re.compile(r"\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)?\s*(\"(?:[^\"\\]|\\.)*\")?\s*")


def deploy_texts() -> list[tuple[str, str]]:
    """The PromQL of the alert rules and the dashboard, by where it is."""
    rules = (ROOT / "deploy" / "prometheus" / "acl-rules.yml").read_text()
    dash = json.loads((ROOT / "deploy" / "grafana" / "acl-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    return [("acl-rules.yml", rules), ("acl-dashboard.json", "\n".join(exprs))]


def doc_texts() -> list[tuple[str, str]]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(p.name, p.read_text()) for p in docs]


def mention_mismatches(texts, table) -> list[str]:
    wrong = []
    for where, text in texts:
        # a table cell writes PromQL's "|" as "\|"
        for m in _MENTION.finditer(text.replace("\\|", "|")):
            name, star, braces = m.groups()
            if star or name in NOT_METRICS:
                continue                       # acl_nfqueue_*: a prefix
            family = name
            if family not in table:
                family = next((name[:-len(s)] for s in HISTOGRAM_SUFFIXES
                               if name.endswith(s) and name[:-len(s)] in table), None)
            if family is None:
                wrong.append(f"{where}: {name}: no such metric in docs/metrics.md")
                continue
            labels = table[family].labels
            for part in (braces or "{}")[1:-1].split(","):
                if not part.strip():
                    continue
                label, op, value = _MATCHER.fullmatch(part).groups()
                if label in TARGET_LABELS:
                    continue
                if label not in labels:
                    wrong.append(f"{where}: {name}: no label {label!r}")
                elif op == "=" and labels[label] and json.loads(value) not in labels[label]:
                    wrong.append(f"{where}: {name}: {label}={value} is no value it takes")
    return wrong


def test_docs_and_deploy_name_documented_metrics_and_labels():
    texts = doc_texts() + deploy_texts()
    assert sum(len(_MENTION.findall(t)) for _w, t in texts) > 150     # the scan sees them
    assert mention_mismatches(texts, metrics_table()) == []


def test_an_unknown_metric_label_or_value_in_a_doc_is_found():
    planted = [("planted.md", "`acl_decision_total` and `acl_leases_active{queue}`, "
                              '`acl_reloads_total{result="failed"}`; fine: '
                              '`acl_reloads_total{result="failure"}`, `acl_nfqueue_*`, '
                              "`acl_decision_latency_seconds_bucket{le=\"0.001\"}`")]
    assert mention_mismatches(planted, metrics_table()) == [
        "planted.md: acl_decision_total: no such metric in docs/metrics.md",
        "planted.md: acl_leases_active: no label 'queue'",
        'planted.md: acl_reloads_total: result="failed" is no value it takes']


def test_the_table_reader_reads_every_row():
    text = (ROOT / "docs" / "metrics.md").read_text()
    assert len(metrics_table()) == len(re.findall(r"^\| `acl_", text, re.M))


def test_scraped_names():
    assert scraped_name("acl_reloads", "counter") == "acl_reloads_total"
    assert scraped_name("acl_core", "info") == "acl_core_info"
    assert scraped_name("acl_policy_rules", "gauge") == "acl_policy_rules"
    assert Path(ROOT / "docs" / "metrics.md").is_file()
