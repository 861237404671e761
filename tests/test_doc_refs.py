"""The docs' references hold: to each other, to the repository's files, and
to the settings the programs read.

* A cross-reference -- ``docs/protocol.md, "Leases"``, ``configuration.md
  "Sockets"``, operator-guide.md's ``section 4`` -- names a heading of that
  doc (``## 4. Migrating``, ``#### Leases across a restart``, a heading's
  text before its colon) or a bold lead-in of a paragraph or list item
  (``**Sockets.**``, ``**`[run]`.**``).
* A repository path the docs name (``deploy/...``, ``tests/...``,
  ``acl/...``, ``ext/...``, ``bench/...``, ``docs/...``) exists.
* The settings tables list what the programs read: every ``ACL_NFQ_*`` of
  deploy/nfqueue/acl-nfqueue-rules with its default (docs/nfqueue.md), every
  ``ACL_WRAP_*`` of ext/wrap/main.c with its default and every option of its
  getopt string (docs/acl-wrap.md).

Each check is a function returning its complaints, run on the real files
and on a planted mistake.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in DOCS}


# -- cross-references -----------------------------------------------------------

def anchors(text: str) -> set[str]:
    """What a reference may name in a doc: its headings (whole, before a
    colon or a parenthesis, without a section number) and bold lead-ins."""
    out = set()
    for m in re.finditer(r"^#+ +(.+?) *$", text, re.M):
        title = m.group(1)
        plain = re.sub(r"^\d+\. +", "", title)
        for t in (title, plain, plain.split(":")[0], plain.split(" (")[0]):
            out.add(t.strip().strip("`").lower())
    for m in re.finditer(r"^\s*(?:[-*] +)?\*\*(.+?)\.?\*\*", text, re.M):
        out.add(m.group(1).strip().strip("`").lower())
    # the tables of a doc's TOML ("docs/configuration.md `[sockets]`")
    out.update(f"[{t}]" for t in re.findall(r"^\[([a-z_]+)\]", text, re.M))
    return out


#: ``X.md "Title"``, ``X.md, "Title"``, ``X.md `[run]` `` (a bold lead-in)
_REF = re.compile(r"\b([a-z-]+\.md)`?,?\s+(?:\"([^\"]+)\"|`(\[[a-z_]+\])`)")
_SECTION = re.compile(r"\b[Ss]ection (\d+)\b")


def reference_problems(texts: dict[str, str]) -> list[str]:
    wrong = []
    for name, text in texts.items():
        flat = " ".join(text.split())
        for m in _REF.finditer(flat):
            target, title = m.group(1), (m.group(2) or m.group(3))
            if target not in texts:
                if target != "semantics.md":          # the spec, outside the repository
                    wrong.append(f"{name}: {target}: no such doc")
                continue
            if title.strip().lower() not in anchors(texts[target]):
                wrong.append(f"{name}: {target} {title!r}: no such heading or lead-in")
        if name == "operator-guide.md":
            numbers = set(re.findall(r"^## (\d+)\. ", text, re.M))
            for m in _SECTION.finditer(flat):
                if m.group(1) not in numbers:
                    wrong.append(f"{name}: section {m.group(1)}: no such section")
    return wrong


def test_cross_references_name_existing_sections():
    texts = doc_texts()
    flat = " ".join(" ".join(texts.values()).split())
    assert len(_REF.findall(flat)) >= 15                 # the scan sees them
    assert reference_problems(texts) == []


def test_a_reference_to_a_missing_section_is_found():
    texts = doc_texts()
    texts["planted.md"] = ('see docs/protocol.md, "Leases across a reboot", and section 12, '
                           'docs/configuration.md `[runs]`, docs/nosuch.md "Sockets"; fine: '
                           'docs/protocol.md "Leases across a restart", configuration.md '
                           '"Sockets", nfqueue.md, "Privileges"')
    texts["operator-guide.md"] += "\n(planted: see section 12)\n"
    assert reference_problems(texts) == [
        "operator-guide.md: section 12: no such section",
        "planted.md: protocol.md 'Leases across a reboot': no such heading or lead-in",
        "planted.md: configuration.md '[runs]': no such heading or lead-in",
        "planted.md: nosuch.md: no such doc"]


# -- repository paths -------------------------------------------------------------

_PATH = re.compile(r"(?<![\w/.:-])((?:deploy|tests|acl|ext|bench|docs)/[\w.@*-]+(?:/[\w.@*-]+)*)")


def path_problems(texts: dict[str, str]) -> list[str]:
    wrong = []
    for name, text in texts.items():
        for m in _PATH.finditer(text):
            path = m.group(1).rstrip(".")
            if not list(ROOT.glob(path)):
                wrong.append(f"{name}: {path}: no such file in the repository")
    return wrong


def test_repository_paths_the_docs_name_exist():
    texts = doc_texts()
    assert sum(len(_PATH.findall(t)) for t in texts.values()) >= 100
    assert path_problems(texts) == []


def test_a_path_that_does_not_exist_is_found():
    planted = {"planted.md": "run `tests/wrap/test_nosuch.py` and deploy/systemd/acl.service, "
                             "`tests/deploy/acl-rules*.test.yml`; installed to /etc/acl/run"}
    assert path_problems(planted) == ["planted.md: tests/wrap/test_nosuch.py: no such file "
                                      "in the repository"]


# -- stanzas quoted from deploy/ ----------------------------------------------------

#: a fenced block's comment naming the deploy/ files the lines after it are from
_QUOTED_FROM = re.compile(r"^# .*\((deploy/[\w./@-]+(?: \+ [\w./@-]+)*)\)$")


def stanza_problems(texts: dict[str, str]) -> list[str]:
    """Lines a doc says are from deploy/ files (``# inetd.conf
    (deploy/inetd.conf)``, then the lines up to a blank line or the next
    comment) that none of those files holds, blanks aside."""
    wrong = []
    for name, text in texts.items():
        for block in re.findall(r"^```.*?\n(.*?)^```", text, re.S | re.M):
            files: list[Path] = []
            for line in block.splitlines():
                m = _QUOTED_FROM.match(line)
                if m:
                    first, *more = m.group(1).split(" + ")
                    files = [ROOT / first] + [(ROOT / first).parent / f for f in more]
                    continue
                if not line.strip() or line.startswith("#"):
                    files = []
                    continue
                if files:
                    want = " ".join(line.split())
                    held = [" ".join(ln.split()) for f in files for ln in f.read_text().splitlines()]
                    if not any(want in h for h in held):
                        wrong.append(f"{name}: {want!r} is in none of "
                                     f"{', '.join(str(f.relative_to(ROOT)) for f in files)}")
    return wrong


def test_stanzas_quoted_from_deploy_are_there():
    texts = doc_texts()
    assert sum(len(re.findall(_QUOTED_FROM, ln)) for t in texts.values()
               for ln in t.splitlines()) >= 3
    assert stanza_problems(texts) == []


def test_a_stanza_that_drifted_from_deploy_is_found():
    planted = {"planted.md": "```\n# inetd.conf (deploy/inetd.conf)\n"
                             "127.0.0.1:7 stream tcp nowait root /usr/local/bin/acl-wrap acl-wrap "
                             "-n echo /bin/cat\n"
                             "# systemd (deploy/systemd/acl-wrap.socket + acl-wrap@.service)\n"
                             "ExecStart=/usr/local/bin/acl-wrap -n echo /bin/cat\n"
                             "ExecStart=/usr/local/bin/acl-wrap -o -n echo /bin/cat\n```\n"}
    assert stanza_problems(planted) == [
        "planted.md: 'ExecStart=/usr/local/bin/acl-wrap -o -n echo /bin/cat' is in none of "
        "deploy/systemd/acl-wrap.socket, deploy/systemd/acl-wrap@.service"]


# -- settings the programs read ---------------------------------------------------

def table_rows(text: str, first_column: str) -> dict[str, list[str]]:
    """``{backquoted word of the first cell matching first_column: cells}``."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) >= 2:
            m = re.match(rf"`({first_column})", cells[0])
            if m:
                rows[m.group(1)] = cells
    return rows


def nfq_setting_problems(script: str, doc: str) -> list[str]:
    read: dict[str, set[str]] = {}
    for var, default in re.findall(r"\$\{(ACL_NFQ_\w+):-([^}]*)\}", script):
        read.setdefault(var, set()).add(default)
    read.update({v: {""} for v in re.findall(r"\$\{(ACL_NFQ_\w+)\}", script)
                 if v not in read})
    rows = table_rows(doc, r"ACL_NFQ_\w+")
    wrong = [f"{v}: read by the script, not in docs/nfqueue.md" for v in sorted(set(read) - set(rows))]
    wrong += [f"{v}: in docs/nfqueue.md, not read" for v in sorted(set(rows) - set(read))]
    for var in sorted(set(read) & set(rows)):
        cell = rows[var][1]
        shown = set(re.findall(r"`([^`]*)`", cell)) or ({""} if cell == "none" else {cell})
        if shown != read[var]:
            wrong.append(f"{var}: default {sorted(read[var])}, documented {sorted(shown)}")
    return wrong


def test_nfqueue_rules_settings_are_documented_with_their_defaults():
    script = (ROOT / "deploy" / "nfqueue" / "acl-nfqueue-rules").read_text()
    doc = (ROOT / "docs" / "nfqueue.md").read_text()
    assert nfq_setting_problems(script, doc) == []


def test_an_undocumented_or_wrong_nfqueue_setting_is_found():
    script = (ROOT / "deploy" / "nfqueue" / "acl-nfqueue-rules").read_text()
    doc = (ROOT / "docs" / "nfqueue.md").read_text()
    planted = doc.replace("| `ACL_NFQ_CHAIN` |", "| `ACL_NFQ_CHAINS` |").replace(
        "| `ACL_NFQ_TCP` | `22` |", "| `ACL_NFQ_TCP` | `ssh` |")
    assert nfq_setting_problems(script, planted) == [
        "ACL_NFQ_CHAIN: read by the script, not in docs/nfqueue.md",
        "ACL_NFQ_CHAINS: in docs/nfqueue.md, not read",
        "ACL_NFQ_TCP: default ['22'], documented ['ssh']"]


def wrap_setting_problems(main_c: str, doc: str) -> list[str]:
    read = set(re.findall(r'(?:getenv|copy_env)\("(ACL_WRAP_\w+)"\)', main_c))
    defines = dict(re.findall(r"^#define DEFAULT_(\w+) \"?([^\"\n]*)\"?$", main_c, re.M))
    options = set(re.search(r'getopt\(argc, argv, "\+?([^"]+)"\)', main_c).group(1)
                  .replace(":", "")) - {"h"}
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and (m := re.search(r"`(ACL_WRAP_\w+)", cells[1])):
            rows[m.group(1)] = cells
    wrong = [f"{v}: read by acl-wrap, not in docs/acl-wrap.md" for v in sorted(read - set(rows))]
    wrong += [f"{v}: in docs/acl-wrap.md, not read" for v in sorted(set(rows) - read)]
    for var in sorted(read & set(rows)):
        suffix = var.removeprefix("ACL_WRAP_")
        code = defines.get(suffix, defines.get(f"{suffix}_MS"))
        if code is not None and f"`{code}`" not in rows[var][2]:
            wrong.append(f"{var}: default {code}, documented {rows[var][2]}")
    shown = {o for cells in rows.values() for o in re.findall(r"`-(\w)", cells[0])}
    wrong += [f"-{o}: an option of acl-wrap, not in docs/acl-wrap.md" for o in sorted(options - shown)]
    wrong += [f"-{o}: in docs/acl-wrap.md, no option of acl-wrap" for o in sorted(shown - options)]
    return wrong


def test_acl_wrap_settings_are_documented_with_their_defaults():
    main_c = (ROOT / "ext" / "wrap" / "main.c").read_text()
    doc = (ROOT / "docs" / "acl-wrap.md").read_text()
    assert len(re.findall(r"`ACL_WRAP_\w+", doc)) >= 5
    assert wrap_setting_problems(main_c, doc) == []


def test_a_wrong_acl_wrap_setting_is_found():
    main_c = (ROOT / "ext" / "wrap" / "main.c").read_text()
    doc = (ROOT / "docs" / "acl-wrap.md").read_text()
    planted = doc.replace("| `ACL_WRAP_TIMEOUT` | `2000` |", "| `ACL_WRAP_TIMEOUT` | `5000` |")
    planted = planted.replace("| `-o` / `-c` |", "| `-o` / `-x` |")
    assert wrap_setting_problems(main_c, planted) == [
        "ACL_WRAP_TIMEOUT: default 2000, documented `5000`",
        "-c: an option of acl-wrap, not in docs/acl-wrap.md",
        "-x: in docs/acl-wrap.md, no option of acl-wrap"]
