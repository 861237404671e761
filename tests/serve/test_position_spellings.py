"""One mistake, every TOML spelling: the message points at the same key.

TOML writes one table many ways -- a ``[table]`` header (spaces inside
the brackets, the name quoted), dotted keys above every header
(``nfqueue.queues = 1``), an inline table (``nfqueue = { queues = 1 }``) --
and one key many ways: bare, ``"quoted"``, ``'literal'``, with escapes
(``"\\u0071ueues"``), dotted (``ports."22" =``).  The generator here
writes one policy (:data:`POLICY`, with one mistake planted) in spellings
drawn from a seed, checks with tomllib that the text reads back as the
policy, and records where it wrote each key, value and table.  The error
must start with the position of the offending key (an unknown key, a bad
port), its value (a bad value), or its table (a key left out: the table's
header, the first dotted key naming it, an inline table's ``{``, a
``[[source]]`` element's header or ``{``).  The scanner must also find
exactly the key paths tomllib reads, no more, no fewer.
"""

from __future__ import annotations

import copy
import random
import tomllib

import pytest

from acl import nfq, toml_positions
from acl.errors import PolicyError
from acl.policy import load_policy

SEEDS = range(40)
PORTS = {"22": '"sshd"', "10.0.0.1:80": '"web"', "[fd00::1]:443": '"tls"'}
#: the policy: a table is a dict, a key's value its TOML text, [[source]] a list
POLICY = {
    "sockets": {"query": '"q.sock"', "mode": '"0660"'},
    "metrics": {"listen": '""'},
    "limits": {"sources": "1024", "rate": "0"},
    "run": {"watch": "false", "keep_leases": "0"},
    "names": {"lookup": "false", "cache": "100"},
    "nfqueue": {"queues": "[1, 2]", "batch": "8", "ports": PORTS},
    "source": [{"type": '"hosts_access"', "allow": '"hosts.allow"', "deny": '"hosts.deny"'},
               {"type": '"tcprules"', "file": '"tcp.rules"', "services": '["svc"]'}],
}


def _set(*path, value):
    def plant(policy):
        *table, key = path
        node = policy
        for k in table:
            node = node[k]
        if value is None:
            del node[key]
        else:
            node[key] = value
    return plant


#: name -> (how to plant it, the key path the message points at, at what --
#: "key", "value" or "table" -- and words of the message)
MISTAKES = {
    "nfqueue unknown key": (_set("nfqueue", "servise", value="1"), ("nfqueue", "servise"),
                            "key", "unknown key 'servise'"),
    "nfqueue without ports": (_set("nfqueue", "ports", value=None), ("nfqueue",), "table",
                              "ports must map"),
    "ports not a table": (_set("nfqueue", "ports", value='"22"'), ("nfqueue", "ports"),
                          "value", "ports must map"),
    "port out of range": (_set("nfqueue", "ports", "0", value='"x"'),
                          ("nfqueue", "ports", "0"), "key", "out of range"),
    "port twice": (_set("nfqueue", "ports", "022", value='"x"'),
                   ("nfqueue", "ports", "022"), "key", "the same port as '22'"),
    "IPv4 in brackets": (_set("nfqueue", "ports", "[10.0.0.1]:22", value='"x"'),
                         ("nfqueue", "ports", "[10.0.0.1]:22"), "key", "brackets hold"),
    "empty service": (_set("nfqueue", "ports", "53", value='""'), ("nfqueue", "ports", "53"),
                      "value", "service must be a non-empty string"),
    "nfqueue bad value": (_set("nfqueue", "batch", value="0"), ("nfqueue", "batch"), "value",
                          "batch must be a number"),
    "limits unknown key": (_set("limits", "servise", value="1"), ("limits", "servise"), "key",
                           "unknown key 'servise'"),
    "a dot in an unknown key": (_set("limits", "rate.max", value="1"), ("limits", "rate.max"),
                                "key", "unknown key 'rate.max'"),
    "a dot in an unknown nfqueue key": (_set("nfqueue", "batch.max", value="1"),
                                        ("nfqueue", "batch.max"), "key",
                                        "unknown key 'batch.max'"),
    "limits bad value": (_set("limits", "sources", value="0"), ("limits", "sources"), "value",
                         "must be 1 .. 67108864"),
    "decimal mode": (_set("sockets", "mode", value="600"), ("sockets", "mode"), "value",
                     "600 is a decimal integer"),
    "run bad value": (_set("run", "keep_leases", value="-1"), ("run", "keep_leases"), "value",
                      "must be 0 .. "),
    "names bad value": (_set("names", "cache", value="0"), ("names", "cache"), "value",
                        "must be 1 .. 16777216"),
    "metrics bad value": (_set("metrics", "listen", value='"localhost"'),
                          ("metrics", "listen"), "value", "expected ADDRESS:PORT"),
    "unknown section": (_set("limit", value={"sources": "1"}), ("limit",), "key",
                        "limit: unknown section"),
    "source without type": (_set("source", 1, "type", value=None), ("source", 1), "table",
                            "source[1]: no type"),
    "source without allow": (_set("source", 0, "allow", value=None), ("source", 0), "table",
                             "source[0].allow: a file name is required"),
    "unknown source type": (_set("source", 1, "type", value='"tcpwrappers"'),
                            ("source", 1, "type"), "value", "unknown source type"),
    "unknown source key": (_set("source", 0, "servise", value="1"), ("source", 0, "servise"),
                           "key", "unknown key 'servise'"),
}


class _Writer:
    """Lines of TOML, and where each key path's key, value and table went."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lines: list[str] = []
        self.line = ""
        self.at: dict[tuple, dict[str, tuple[int, int]]] = {}

    def put(self, text: str, path: tuple | None = None, *roles: str) -> None:
        for role in roles:      # the first place a role is written is kept
            self.at.setdefault(path, {}).setdefault(role, (len(self.lines) + 1,
                                                           len(self.line) + 1))
        first, *more = text.split("\n")      # a value may span lines
        self.line += first
        for part in more:
            self.lines.append(self.line)
            self.line = part

    def end(self) -> None:
        self.line += self.rng.choice(["", "", "  # a comment", "\t# [not] = a header"])
        self.lines.append(self.line)
        self.line = ""
        self.lines += self.rng.choice([[], [], [""], ["# between"], ["# U+2028 \u2028 here"]])

    def space(self) -> str:
        return self.rng.choice(["", "", " ", "\t", "  "])

    def key(self, key: str, path: tuple, *roles: str) -> None:
        """One key, spelt bare, quoted, literal or with an escape."""
        bare = all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
        escaped = f'"\\u{ord(key[0]):04X}{key[1:]}"'        # "\u0071ueues"
        spellings = [f'"{key}"', f"'{key}'", escaped]
        self.put(self.rng.choice(spellings + [key] * 3 if bare else spellings), path, *roles)

    def dotted(self, prefix: tuple, keys: tuple, roles_of_last=("key",)) -> None:
        """``a.b.c``: each part a key of its own, the tables it passes named
        there (unless they were before)."""
        for n, key in enumerate(keys):
            if n:
                self.put(self.rng.choice([".", " . ", ".\t", " ."]))
            last = n == len(keys) - 1
            path = prefix + keys[:n + 1]
            self.key(key, path, *(roles_of_last if last else ("key", "table")))

    def key_value(self, prefix: tuple, keys: tuple, value) -> None:
        """``keys = value`` (value: TOML text, or a dict written inline)."""
        self.dotted(prefix, keys)
        self.put(self.space() + "=" + self.space())
        path = prefix + keys
        if isinstance(value, dict):
            self.inline_table(path, value)
        else:
            self.put(value, path, "value")

    def inline_table(self, path: tuple, table: dict) -> None:
        self.put("{" + self.space(), path, "value", "table")
        for n, (key, value) in enumerate(table.items()):
            if n:
                self.put("," + self.space())
            if isinstance(value, dict) and value and self.rng.random() < 0.5:
                for m, (sub, text) in enumerate(value.items()):      # ports.22 = ...
                    if m:
                        self.put(", ")
                    self.key_value(path, (key, sub), text)
            else:
                self.key_value(path, (key,), value)
        self.put(self.space() + "}")

    def header(self, path: tuple, array: bool = False) -> None:
        """``[a.b]`` / ``[[a]]``, spaces and quotes drawn; ``path`` is the
        table's (an array element's, index and all)."""
        names = tuple(k for k in path if isinstance(k, str))
        self.put(self.space(), None)
        self.put("[[" if array else "[", path, "key", "value", "table")
        self.put(self.space())
        for n, key in enumerate(names):
            if n:
                self.put(self.rng.choice([".", " . "]))
            self.key(key, None)
        self.put(self.space() + ("]]" if array else "]"))
        self.end()


def _write(policy: dict, rng: random.Random) -> _Writer:
    """The policy in spellings ``rng`` draws: each table as a header, as
    dotted keys or inline above every header; [[source]] as headers or one
    array of inline tables."""
    w = _Writer(rng)
    spelling = {name: rng.choice(["header", "header", "dotted", "inline"]) for name in policy}
    spelling["source"] = rng.choice(["headers", "headers", "array"])
    names = sorted(policy, key=lambda _: rng.random())
    for name in names:                   # above every header
        table = policy[name]
        if spelling[name] == "dotted":
            for key, value in table.items():
                if isinstance(value, dict) and rng.random() < 0.5:
                    for sub, text in value.items():
                        w.key_value((), (name, key, sub), text)
                        w.end()
                else:
                    w.key_value((), (name, key), value)
                    w.end()
        elif spelling[name] == "inline":
            w.key_value((), (name,), table)
            w.end()
        elif spelling[name] == "array":
            w.dotted((), (name,))
            w.put(" = [")
            one_line = rng.random() < 0.5
            if not one_line:
                w.end()
            for i, element in enumerate(table):
                w.put("  " if not one_line else "")
                w.inline_table((name, i), element)
                w.put(",")
                if not one_line:
                    w.end()
            w.put("]")
            w.end()
    for name in names:
        table = policy[name]
        if spelling[name] == "headers":
            for i, element in enumerate(table):
                w.header((name, i), array=True)
                subtables = []
                for key, value in element.items():
                    if isinstance(value, dict) and rng.random() < 0.5:
                        subtables.append((key, value))       # [source.sub]: element i's
                        continue
                    w.put(w.space())
                    w.key_value((name, i), (key,), value)
                    w.end()
                _subtables(w, (name, i), subtables)
        elif spelling[name] == "header":
            # a [table.sub] may come before [table] itself
            early = rng.random() < 0.3
            if early:
                subtables = [(k, v) for k, v in table.items() if isinstance(v, dict) and v]
                _subtables(w, (name,), subtables)
            w.header((name,))
            subtables = []
            for key, value in table.items():
                how = rng.choice(["inline", "dotted", "header"]) if isinstance(value, dict) \
                    else "plain"
                if early and isinstance(value, dict) and value:
                    continue
                if how == "header" and value:
                    subtables.append((key, value))
                    continue
                if how == "dotted" and value:
                    for sub, text in value.items():
                        w.key_value((name,), (key, sub), text)
                        w.end()
                    continue
                w.put(w.space())
                w.key_value((name,), (key,), value)
                w.end()
            _subtables(w, (name,), subtables)   # after every plain key of the table
    return w


def _subtables(w: _Writer, table: tuple, subtables: list) -> None:
    for key, value in subtables:
        w.header((*table, key))
        for sub, text in value.items():
            w.key_value((*table, key), (sub,), text)
            w.end()


def _read(policy):
    """What tomllib makes of the policy: scalars read from their text."""
    if isinstance(policy, dict):
        return {k: _read(v) for k, v in policy.items()}
    if isinstance(policy, list):
        return [_read(v) for v in policy]
    return tomllib.loads(f"v = {policy}")["v"]


def _paths(data, prefix=()) -> set:
    out = set()
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        out.add(prefix + (key,))
        if isinstance(value, (dict, list)):
            out |= _paths(value, prefix + (key,))
    return out


def _mistakes() -> list[str]:
    return [m for m in MISTAKES if nfq.AVAILABLE or not MISTAKES[m][1][0] == "nfqueue"]


def _policy(seed: int, mistake: str | None) -> dict:
    policy = copy.deepcopy(POLICY)
    if not nfq.AVAILABLE:            # every [nfqueue] would be refused
        del policy["nfqueue"]
    if mistake is not None:
        MISTAKES[mistake][0](policy)
    return policy


def _files(tmp_path) -> None:
    (tmp_path / "hosts.allow").write_text("ALL: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    (tmp_path / "tcp.rules").write_text("127.:allow\n:deny\n")


CASES = [(seed, m) for seed in SEEDS for m in _mistakes()]


@pytest.mark.parametrize(("seed", "mistake"), CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_a_mistake_is_reported_at_its_key_in_every_spelling(seed, mistake, tmp_path):
    rng = random.Random(f"{seed}/{mistake}")
    policy = _policy(seed, mistake)
    w = _write(policy, rng)
    text = "\n".join(w.lines) + "\n"
    assert tomllib.loads(text) == _read(policy), text      # the same policy
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    # odd seeds end their lines as Windows editors do
    p.write_bytes(text.replace("\n", "\r\n" if seed % 2 else "\n").encode())
    _, path, role, words = MISTAKES[mistake]
    line, column = w.at[path][role]
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    numbered = "\n".join(f"{n:3} {t}" for n, t in enumerate(w.lines, 1))
    assert str(exc.value).startswith(f"{p}:{line}:{column}: "), \
        f"{exc.value}\nexpected {line}:{column} ({role} of {path})\n{numbered}"
    assert words in str(exc.value)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_scanner_finds_the_key_paths_tomllib_reads(seed):
    """Every key, table and array element tomllib reads, and nothing else,
    each where the generator wrote it."""
    rng = random.Random(seed)
    mistake = rng.choice([None, *_mistakes()])
    w = _write(_policy(seed, mistake), rng)
    text = "\n".join(w.lines) + "\n"
    if seed % 2:
        text = text.replace("\n", "\r\n")
    places = toml_positions._Scanner(text).run()
    assert set(places) == _paths(tomllib.loads(text))
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    for path, roles in w.at.items():
        if path is None:
            continue
        key, value = places[path]
        for role, (line, column) in roles.items():
            index = starts[line - 1] + column - 1
            assert index == (key if role == "key" else value), (path, role, text)


#: values the scanner must step over: what looks like a header, a key or a
#: comment inside a string, quotes against a closing delimiter, a space in
#: a date-time, arrays over lines with comments, brackets inside strings
TRICKY = ['"""\n[not.a.header]\nk = 1\n"""', "'''\n[[x]] # no\n'''", '"""a""""',
          "'''b'''''", '"q\\"[x] = 1"', "'#not a comment'", "1979-05-27 07:32:00",
          "1979-05-27", "1979-05-27T07:32:00Z", "[\n  1, # one\n  2,\n]", "0x1F", "1e+5",
          '[[1, 2], ["a]"], { x = "}" }]', '"\\u00e9 = \\\\"', '"""\\\n  x = 1"""', "+inf",
          '"""#"""', "[ ]", "{ }", "'a\"b'", '"""a\\"""b"""']


@pytest.mark.parametrize("seed", SEEDS)
def test_the_scanner_steps_over_every_kind_of_value(seed):
    """Tricky values among the policy's keys: the scanner still finds
    exactly tomllib's key paths, each where it was written."""
    rng = random.Random(seed)
    policy = _policy(seed, None)
    for table in [*(t for t in policy.values() if isinstance(t, dict)), *policy["source"]]:
        for n in range(rng.randint(1, 3)):
            table[f"x{n}"] = rng.choice(TRICKY)
        table["sub"] = {"y": rng.choice(TRICKY)}      # a table of its own
    w = _write(policy, rng)
    text = "\n".join(w.lines) + "\n"
    assert tomllib.loads(text) == _read(policy), text
    places = toml_positions._Scanner(text).run()
    assert set(places) == _paths(tomllib.loads(text)), text
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    for path, roles in w.at.items():
        key, value = places[path]
        for role, (line, column) in roles.items():
            index = starts[line - 1] + column - 1
            assert index == (key if role == "key" else value), (path, role, text)


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_the_policy_without_its_mistake_loads(seed, tmp_path):
    """The spellings themselves load: the planted mistake is what is refused."""
    w = _write(_policy(seed, None), random.Random(seed))
    _files(tmp_path)
    p = tmp_path / "policy.toml"
    p.write_text("\n".join(w.lines) + "\n")
    load_policy(p)
