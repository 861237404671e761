"""docs/metrics.md's table, read once for the tests that hold the code and
the other docs to it (tests/test_doc_metrics.py, tests/nfq/test_frontdoor.py,
tests/deploy/test_prometheus.py).

A row is ``| `NAME` | TYPE | LABELS | what |``.  LABELS names each label in
backquotes, at the top level of the cell; a parenthesis right after a label
may list the values it takes, each in backquotes and followed by ``,``,
``:`` (an explanation follows) or ``)``:

    `socket` (`query`, `policy`, `admin`, `metrics`), `errno` (`EMFILE`, ...)
    `why` (`deadline`: `[names] deadline` passed, `shed`: ...)

Backquoted text inside the parenthesis that is not such a value (``[names]
deadline`` above) is prose.  A label without a parenthesis takes any value
(a service name, a queue number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS_DOC = ROOT / "docs" / "metrics.md"

_ROW = re.compile(r"^\| `(acl_[a-z0-9_]+)` \|([^|]+)\|([^|]*)\|.*\|$", re.M)
_VALUE = re.compile(r"`([A-Za-z0-9_]+)`(?=\s*[,:)])")


@dataclass
class Row:
    kind: str                                   # counter, gauge, histogram, gauge (info)
    labels: dict[str, frozenset[str] | None] = field(default_factory=dict)


def _labels(cell: str) -> dict[str, frozenset[str] | None]:
    """The label names of a LABELS cell, each with its listed values (None: any)."""
    out: dict[str, frozenset[str] | None] = {}
    depth, i, last = 0, 0, None
    while i < len(cell):
        ch = cell[i]
        if ch == "(":
            if depth == 0 and last is not None:
                end = cell.index(")", i)       # the values never hold a parenthesis
                out[last] = frozenset(_VALUE.findall(cell[i:end + 1]))
                i = end + 1
                continue
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "`" and depth == 0:
            end = cell.index("`", i + 1)
            last = cell[i + 1:end]
            out[last] = None
            i = end + 1
            continue
        elif ch not in " ,":
            last = None                        # prose between labels ends the pairing
        i += 1
    return out


def metrics_table(text: str | None = None) -> dict[str, Row]:
    """``{family name as scraped: Row}`` of docs/metrics.md (or of ``text``)."""
    text = METRICS_DOC.read_text() if text is None else text
    return {m.group(1): Row(m.group(2).strip(), _labels(m.group(3)))
            for m in _ROW.finditer(text)}


def scraped_name(name: str, kind: str) -> str:
    """The family name a scrape shows for a prometheus_client family."""
    return name + {"counter": "_total", "info": "_info"}.get(kind, "")
