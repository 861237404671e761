"""The ``[nfqueue]`` table's reader (acl/nfqueue_config.py) on generated input.

* Port keys (docs/nfqueue.md: ``PORT``, ``ADDR:PORT``, ``[ADDR]:PORT`` for
  IPv6) against a model of their own: the address read by the C library's
  ``inet_pton`` (the parser the kernel's tools use), the port as decimal
  digits 1..65535; a key is refused, naming the mistake, or lands in the map
  it belongs to -- and two spellings of one port are refused, not resolved
  by whichever TOML key was read last.
* Policy files with an ``[nfqueue]`` table (keys in any order, comments,
  indentation) and one planted mistake: ``acl serve --check``'s error is at
  ``policy.toml:LINE:COLUMN`` of the wrong value (of the key, for an
  unknown key; of the key's own line in a ``[nfqueue.ports]`` table) and
  names the key; the same file without the mistake reads back what it says.

Every case is generated from a seed shown in its id.
"""

from __future__ import annotations

import random
import re
import socket

import pytest

from acl import nfq
from acl.errors import PolicyError
from acl.nfqueue_config import TABLE_KEYS, NfqueueConfig
from acl.policy import load_policy

# -- port keys -------------------------------------------------------------------

# (good spellings, bad ones): a key draws a good one with odds 0.85 (a key
# has up to three parts that can go bad)
PORTS = (["22", "1", "65535", "8080", "022", " 53 "],
         ["0", "65536", "99999", "+22", "2_2", "\u0662\u0662", "-1", "", "ssh", "2 2", "0x16"])
V4 = (["10.0.0.1", "192.0.2.10", "255.255.255.255", "0.0.0.0"],
      ["10.0.0.300", "1.2.3", "01.2.3.4", "a.b.c.d"])
V6 = (["fd00::1", "2001:db8::10", "2001:db8:0:0:0:0:0:10", "::1", "::1.2.3.4",
       "fd00:0:0:0:0:0:0:1", "1:2:3:4:5:6:7:8"],
      ["fd00::1::2", "g::1", "1:2:3:4:5:6:7:8:9", "fe80::1%eth0", "10.0.0.1"])
#: IPv4-mapped: IPv4 packets are looked up by their 4-byte address
MAPPED = ["::ffff:10.0.0.1", "::FFFF:192.0.2.1", "0:0:0:0:0:ffff:a00:1"]


def _pick(r: random.Random, choices: tuple[list[str], list[str]]) -> str:
    return r.choice(choices[0] if r.random() < 0.85 else choices[1])


def _pton(family: int, text: str) -> bytes | None:
    try:
        return socket.inet_pton(family, text)
    except OSError:
        return None


def _model_port(text: str) -> int | str:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return "is not a number"
    return int(text) if 1 <= int(text) <= 65535 else "out of range"


def _model(key: str) -> tuple[bytes | None, int | str]:
    """What docs/nfqueue.md makes of a key: (packed address or None, port),
    or (None, the error's words)."""
    key = key.strip()
    if key.startswith("["):
        addr, _, rest = key[1:].partition("]")
        if not rest.strip().startswith(":"):
            return None, "write an IPv6 address as [ADDR]:PORT"
        port = rest.strip()[1:]
        packed = _pton(socket.AF_INET6, addr.strip())
        if packed is None:
            return None, "is not a numeric address (brackets hold an IPv6 address)"
        if packed[:12] == bytes(10) + b"\xff\xff":
            return None, "is an IPv4 address: write it as"
    elif key.count(":") > 1:
        return None, "write an IPv6 address as [ADDR]:PORT"
    elif ":" in key:
        addr, _, port = key.rpartition(":")
        packed = _pton(socket.AF_INET, addr.strip())
        if packed is None:
            return None, "is not a numeric address"
    else:
        return None, _model_port(key)
    return packed, _model_port(port)


def _key(r: random.Random) -> str:
    """A key as an admin might write it, right or wrong."""
    port = _pick(r, PORTS)
    # PORT, ADDR:PORT, IPv6 unbracketed, [ADDR] with no port, [ADDR]:PORT
    (form,) = r.choices(range(5), weights=(4, 4, 1, 1, 6))
    if form == 0:
        return port
    if form == 1:
        return f"{_pick(r, V4)}:{port}"
    addr = _pick(r, V6) if r.random() < 0.9 else r.choice(MAPPED)
    if form == 2:
        return f"{addr}:{port}"           # unbracketed
    if form == 3:
        return f"[{addr}]"                # no port
    return f"[{addr}]:{port}"


def _respelt(r: random.Random, key: str) -> str:
    """Another spelling of a good key: its port with leading zeros, or its
    IPv6 address written out in all eight groups."""
    head, colon, port = key.strip().rpartition(":")
    port = port.strip()
    if head.startswith("[") and r.random() < 0.5:
        groups = socket.inet_pton(socket.AF_INET6, head[1:-1].strip()).hex(" ", 2).split()
        full = ":".join(format(int(g, 16), "x") for g in groups)
        if f"[{full}]" != head:
            return f"[{full}]:{port}"
    return f"{head}{colon}{'0' * r.randint(1, 2)}{port}"


def _port_case(seed: int) -> tuple[dict, dict, dict, tuple[str, str] | None]:
    """A generated ports table (one key in five, after the first good one,
    another spelling of a good key), and what the model makes of it: the
    port map, the address map, and (key, the error's words) for the first
    key the reader must refuse."""
    r = random.Random(seed)
    table, want_ports, want_addr, error = {}, {}, {}, None
    good: list[str] = []
    for i in range(r.randint(1, 5)):
        key = _respelt(r, r.choice(good)) if good and r.random() < 0.2 else _key(r)
        if key in table:
            continue
        table[key] = f"svc{i}"
        if error is not None:
            continue
        addr, port = _model(key)
        if isinstance(port, str):
            error = (key, port)
            continue
        slot, found = (want_ports, port) if addr is None else (want_addr, (addr, port))
        if found in slot:
            error = (key, "the same port as")
            continue
        slot[found] = f"svc{i}"
        good.append(key)
    return table, want_ports, want_addr, error


PORT_SEEDS = range(300)


@pytest.mark.parametrize("seed", PORT_SEEDS)
def test_port_keys_are_read_as_the_model_reads_them(seed):
    table, want_ports, want_addr, error = _port_case(seed)
    if error is not None:
        with pytest.raises(PolicyError) as exc:
            NfqueueConfig.from_table({"ports": table}, path="p.toml")
        msg = str(exc.value)
        assert msg.startswith("p.toml: [nfqueue] ports"), msg
        assert error[1] in msg, (table, msg)
        return
    cfg = NfqueueConfig.from_table({"ports": table}, path="p.toml")
    assert (cfg.ports, cfg.addr_ports) == (want_ports, want_addr), table


def test_the_generated_keys_reach_every_outcome():
    """The seeds above load tables of several keys and refuse each kind of
    mistake, two spellings of one port among them, many times over."""
    outcomes: dict[str, int] = {}
    for seed in PORT_SEEDS:
        table, ports, addrs, error = _port_case(seed)
        kind = error[1] if error else "loads, several keys" if len(table) > 1 else "loads"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    kinds = {"loads", "loads, several keys", "the same port as", "is not a number",
             "out of range", "is not a numeric address", "write an IPv6 address as [ADDR]:PORT",
             "is not a numeric address (brackets hold an IPv6 address)",
             "is an IPv4 address: write it as"}
    assert set(outcomes) == kinds, outcomes
    assert min(outcomes.values()) >= 5, outcomes
    assert outcomes["loads, several keys"] >= 30 and outcomes["the same port as"] >= 20, outcomes


def test_two_spellings_of_one_port_are_refused():
    for first, second in (("22", "022"), ("[fd00::1]:22", "[fd00:0::1]:22"),
                          ("10.0.0.1:22", "10.0.0.1:022"), ("10.0.0.1:22", " 10.0.0.1 : 22 "),
                          ("[fd00::1]:22", "[ fd00::1 ] : 22")):
        with pytest.raises(PolicyError) as exc:
            NfqueueConfig.from_table({"ports": {first: "a", second: "b"}})
        assert f"ports: {second!r}: the same port as {first!r} (mapped to 'a')" in str(exc.value)
    # the same port with and without an address is the documented override
    cfg = NfqueueConfig.from_table({"ports": {"22": "a", "10.0.0.1:22": "b"}})
    assert cfg.ports == {22: "a"} and cfg.addr_ports == {(bytes([10, 0, 0, 1]), 22): "b"}


@pytest.mark.parametrize("ports", [{"22": ""}, {"22": 22}, {"22": ["sshd"]}, {"22": True},
                                   {}, [22], "22"])
def test_a_service_is_a_non_empty_string_in_a_non_empty_table(ports):
    with pytest.raises(PolicyError, match="service must be a non-empty string|ports must map"):
        NfqueueConfig.from_table({"ports": ports})


@pytest.mark.parametrize("queues", [True, [True], [0, False], [], "0", {"0": 1}, [0.0], [-1]])
def test_queues_are_numbers_not_booleans(queues):
    with pytest.raises(PolicyError, match="queues must be a list of numbers 0..65535"):
        NfqueueConfig.from_table({"ports": {"22": "s"}, "queues": queues})


def test_queues_one_number_or_a_list_duplicates_bound_once():
    table = {"ports": {"22": "s"}}
    assert NfqueueConfig.from_table({**table, "queues": 3}).queues == (3,)
    assert NfqueueConfig.from_table({**table, "queues": [5, 0, 5, 65535]}).queues == (5, 0, 65535)
    assert NfqueueConfig.from_table(table).queues == (0,)


# -- a policy file with an [nfqueue] table ---------------------------------------

GOOD = {"queues": "[1, 2]", "reject": '"reset"', "reject_mark": "0x2a", "malformed": '"accept"',
        "copy_range": "96", "queue_maxlen": "100", "fail_open": "false", "batch": "8",
        "rcvbuf": "0", "ports": '{ 22 = "sshd", "[2001:db8::10]:8080" = "web" }'}
READ = {"queues": (1, 2), "reject": "reset", "reject_mark": 42, "malformed": "accept",
        "copy_range": 96, "queue_maxlen": 100, "fail_open": False, "batch": 8, "rcvbuf": 0}
BAD = {"queues": ["[]", "true", "[70000]", '"0"'], "reject": ['"icmp"', "1"],
       "reject_mark": ["0", "true", "0x100000000"], "malformed": ['"reset"', "false"],
       "copy_range": ["63", "65536", '"128"'], "queue_maxlen": ["0", "16777217", "1.5"],
       "fail_open": ['"no"', "0"], "batch": ["0", "4097", "true"], "rcvbuf": ["-1", "1073741825"],
       "ports": ["{}", '{ 0 = "x" }', '{ ssh = "x" }', '{ 22 = "" }', '"22"',
                 '{ 22 = "a", 022 = "b" }']}
#: where in an inline ``ports`` value of BAD's its message points: the
#: offending key or service inside it (else the value's start)
POINTED_IN_PORTS = {'{ 0 = "x" }': "0 =", '{ ssh = "x" }': "ssh", '{ 22 = "" }': '""',
                    '{ 22 = "a", 022 = "b" }': "022"}
BASE = """\
[[source]]
type = "hosts_access"
allow = "hosts.allow"
deny = "hosts.deny"
"""


#: a [nfqueue.ports] table's bad last line: (line, column of the mistake: "key" or "value", words)
BAD_PORT_LINES = [('ssh = "x"', "key", "is not a number"), ('0 = "x"', "key", "out of range"),
                  ('"10.0.0.300:22" = "x"', "key", "is not a numeric address"),
                  ('"[10.0.0.1]:22" = "x"', "key", "(brackets hold an IPv6 address)"),
                  ("'[fd00::1]' = \"x\"", "key", "[ADDR]:PORT"),
                  ("'[::ffff:10.0.0.1]:22' = \"x\"", "key", "write it as 10.0.0.1:PORT"),
                  ('022 = "x"', "key", "the same port as '22'"),
                  ('"[2001:db8:0::10]:8080" = "x"', "key",
                   "the same port as '[2001:db8::10]:8080'"),
                  ('53 = ""', "value", "service must be a non-empty string")]
UNKNOWN = ["queue", "port", "rejects", "copyrange"]
#: every mistake the file tests plant: ("ports line", index into
#: BAD_PORT_LINES), ("unknown", a name), or (key, a bad value of BAD's)
MISTAKES = ([("ports line", i) for i in range(len(BAD_PORT_LINES))]
            + [("unknown", name) for name in UNKNOWN]
            + [(key, value) for key, values in BAD.items() for value in values])


def _policy(seed: int, tmp_path, mistake: tuple | None):
    """A policy whose [nfqueue] has every key (ports inline among them, or as
    the [nfqueue.ports] table after them) laid out as ``seed`` draws it,
    with ``mistake`` (one of MISTAKES) planted; and where the mistake is:
    (line, column, words of the message)."""
    r = random.Random(seed)
    (tmp_path / "hosts.allow").write_text("ALL: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    kind = None if mistake is None else mistake[0]
    # a bad ports line needs the [nfqueue.ports] table, a bad inline ports value
    # the inline table; else the seed decides
    as_table = kind == "ports line" or (kind != "ports" and r.random() < 0.5)
    keys = sorted((k for k in TABLE_KEYS if not (as_table and k == "ports")),
                  key=lambda _: r.random())
    if kind == "unknown":
        keys.insert(r.randrange(len(keys) + 1), "unknown")
    lines = BASE.splitlines() + r.choice([[""], ["", "# the door"]]) + ["[nfqueue]"]
    want = None
    for key in keys:
        lines += r.choice([[], ["# a comment"], [""], ["# a line\u2028separator"]])
        indent = r.choice(["", "  ", "\t"])
        if key == "unknown":
            lines.append(f"{indent}{mistake[1]} = 1")
            want = (len(lines), len(indent) + 1, f"unknown key {mistake[1]!r}")
        elif key == kind:
            lines.append(f"{indent}{key} = {mistake[1]}")
            inside = mistake[1].index(POINTED_IN_PORTS.get(mistake[1], mistake[1]))
            want = (len(lines), len(indent) + len(key) + 4 + inside, key)
        else:
            lines.append(f"{indent}{key} = {GOOD[key]}")
    if as_table:
        lines += r.choice([[""], ["", "# destination port -> service"]])
        lines.append(r.choice(["[nfqueue.ports]", "[ nfqueue . ports ]  # the map"]))
        lines += ['22 = "sshd"', "", r.choice(['"[2001:db8::10]:8080" = "web"',
                                               "  '[2001:db8::10]:8080' = 'web'"])]
        if kind == "ports line":
            text, what, words = BAD_PORT_LINES[mistake[1]]
            indent = r.choice(["", "    "])
            lines.append(indent + text)
            column = len(indent) + 1 if what == "key" else len(indent) + text.index("=") + 3
            want = (len(lines), column, words)
    p = tmp_path / "policy.toml"
    p.write_bytes(("\n".join(lines) + "\n").encode())
    return p, want


def test_an_empty_ports_table_is_reported_at_its_header(tmp_path):
    (tmp_path / "hosts.allow").write_text("ALL: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    p = tmp_path / "policy.toml"
    lines = BASE.splitlines() + ["[nfqueue]", "queues = [3]", "", "  [nfqueue.ports]  # none yet",
                                 "", "[names]", "lookup = false"]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    want = f"{p}:{len(BASE.splitlines()) + 4}:3: [nfqueue]: ports must map"
    assert str(exc.value).startswith(want), str(exc.value)


@pytest.mark.parametrize("seed", range(len(MISTAKES)))
def test_a_planted_mistake_is_reported_at_its_line_and_column(seed, tmp_path):
    p, (line, column, words) = _policy(seed, tmp_path, MISTAKES[seed])
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    msg = str(exc.value)
    at = re.match(rf"{re.escape(str(p))}:(\d+):(\d+): \[nfqueue\]", msg)
    assert at and (int(at[1]), int(at[2])) == (line, column) and words in msg, \
        (msg, p.read_text())


@pytest.mark.skipif(not nfq.AVAILABLE, reason="acl built without the NFQUEUE binding")
@pytest.mark.parametrize("seed", range(8))
def test_the_file_without_the_mistake_reads_back_what_it_says(seed, tmp_path):
    p, _ = _policy(seed, tmp_path, None)
    cfg = NfqueueConfig.from_table(load_policy(p).nfqueue, p)
    assert {k: getattr(cfg, k) for k in READ} == READ
    assert cfg.ports == {22: "sshd"}
    assert cfg.addr_ports == {(socket.inet_pton(socket.AF_INET6, "2001:db8::10"), 8080): "web"}
