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

# (good spellings, bad ones): a key draws a good one with odds 0.7
PORTS = (["22", "1", "65535", "8080", "022", " 53 "],
         ["0", "65536", "99999", "+22", "2_2", "\u0662\u0662", "-1", "", "ssh", "2 2", "0x16"])
V4 = (["10.0.0.1", "192.0.2.10", "255.255.255.255", "0.0.0.0"],
      ["10.0.0.300", "1.2.3", "01.2.3.4", "a.b.c.d"])
V6 = (["fd00::1", "2001:db8::10", "2001:db8:0:0:0:0:0:10", "::1", "::ffff:10.0.0.1",
       "fd00:0:0:0:0:0:0:1", "1:2:3:4:5:6:7:8"],
      ["fd00::1::2", "g::1", "1:2:3:4:5:6:7:8:9", "fe80::1%eth0", "10.0.0.1"])


def _pick(r: random.Random, choices: tuple[list[str], list[str]]) -> str:
    return r.choice(choices[0] if r.random() < 0.7 else choices[1])


def _v4(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return None


def _v6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None


def _model_port(text: str) -> int | str:
    if not (text.isascii() and text.isdigit()):
        return "is not a number"
    return int(text) if 1 <= int(text) <= 65535 else "out of range"


def _key(r: random.Random) -> tuple[str, bytes | None, int | str]:
    """A key as written, and what the model makes of it: (address, port) or
    (None, the error's words)."""
    port = _pick(r, PORTS)
    form = r.choice([0, 0, 1, 2, 3, 4, 4, 4])
    if form == 0:
        return port, None, _model_port(port.strip())
    if form == 1:
        addr = _pick(r, V4)
        key = f"{addr}:{port}"
        packed = _v4(addr)
        if packed is None:
            return key, None, "is not a numeric address"
        return key, packed, _model_port(port.rstrip())     # the key is stripped, not its parts
    addr = _pick(r, V6)
    if form == 2 and ":" in addr:                  # unbracketed: refused whatever it is
        return f"{addr}:{port}", None, "write an IPv6 address as [ADDR]:PORT"
    if form == 3:
        return f"[{addr}]", None, "write an IPv6 address as [ADDR]:PORT"
    key = f"[{addr}]:{port}"
    packed = _v6(addr)
    if packed is None:
        return key, None, "is not a numeric address (brackets hold an IPv6 address)"
    return key, packed, _model_port(port.rstrip())


@pytest.mark.parametrize("seed", range(300))
def test_port_keys_are_read_as_the_model_reads_them(seed):
    r = random.Random(seed)
    table, want_ports, want_addr, error = {}, {}, {}, None
    for i in range(r.randint(1, 5)):
        key, addr, port = _key(r)
        if key in table:
            continue
        table[key] = f"svc{i}"
        if error is not None:
            continue
        if isinstance(port, str):
            error = (key, port)
            continue
        slot, found = (want_ports, port) if addr is None else (want_addr, (addr, port))
        if found in slot:
            error = (key, "the same port as another key")
            continue
        slot[found] = f"svc{i}"
    if error is not None:
        with pytest.raises(PolicyError) as exc:
            NfqueueConfig.from_table({"ports": table}, path="p.toml")
        msg = str(exc.value)
        assert msg.startswith("p.toml: [nfqueue] ports"), msg
        assert error[1] in msg, (table, msg)
        return
    cfg = NfqueueConfig.from_table({"ports": table}, path="p.toml")
    assert (cfg.ports, cfg.addr_ports) == (want_ports, want_addr), table


def test_two_spellings_of_one_port_are_refused():
    for ports in ({"22": "a", "022": "b"}, {"[fd00::1]:22": "a", "[fd00:0::1]:22": "b"},
                  {"10.0.0.1:22": "a", "10.0.0.1:022": "b"}):
        with pytest.raises(PolicyError, match=r"the same port as another key \(mapped to 'a'\)"):
            NfqueueConfig.from_table({"ports": ports})
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
                  ('022 = "x"', "key", "the same port as another key"),
                  ('"[2001:db8:0::10]:8080" = "x"', "key", "the same port as another key"),
                  ('53 = ""', "value", "service must be a non-empty string")]


def _policy(seed: int, tmp_path, mistake: bool):
    """A policy whose [nfqueue] has every key (ports inline among them, or as
    the [nfqueue.ports] table after them), and the position of the planted
    mistake: (line, column, words of the message)."""
    r = random.Random(seed)
    (tmp_path / "hosts.allow").write_text("ALL: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    as_table = r.random() < 0.5
    keys = sorted((k for k in TABLE_KEYS if not (as_table and k == "ports")),
                  key=lambda _: r.random())
    planted = None if not mistake else "ports" if as_table and r.random() < 0.5 \
        else r.choice(keys + ["unknown"])
    lines = BASE.splitlines() + r.choice([[""], ["", "# the door"]]) + ["[nfqueue]"]
    want = None
    for key in keys + (["unknown"] if planted == "unknown" else []):
        lines += r.choice([[], ["# a comment"], [""]])
        indent = r.choice(["", "  ", "\t"])
        if key == planted == "unknown":
            name = r.choice(["queue", "port", "rejects", "copyrange"])
            lines.append(f"{indent}{name} = 1")
            want = (len(lines), len(indent) + 1, f"unknown key {name!r}")
        elif key == planted:
            value = r.choice(BAD[key])
            lines.append(f"{indent}{key} = {value}")
            want = (len(lines), len(indent) + len(key) + 4, key)
        else:
            lines.append(f"{indent}{key} = {GOOD[key]}")
    if as_table:
        lines += r.choice([[""], ["", "# destination port -> service"]])
        lines.append(r.choice(["[nfqueue.ports]", "[ nfqueue . ports ]  # the map"]))
        lines += ['22 = "sshd"', "", r.choice(['"[2001:db8::10]:8080" = "web"',
                                               "  '[2001:db8::10]:8080' = 'web'"])]
        if planted == "ports":
            text, what, words = r.choice(BAD_PORT_LINES)
            indent = r.choice(["", "    "])
            lines.append(indent + text)
            column = len(indent) + 1 if what == "key" else len(indent) + text.index("=") + 3
            want = (len(lines), column, words)
    p = tmp_path / "policy.toml"
    p.write_text("\n".join(lines) + "\n")
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


@pytest.mark.parametrize("seed", range(60))
def test_a_planted_mistake_is_reported_at_its_line_and_column(seed, tmp_path):
    p, (line, column, words) = _policy(seed, tmp_path, mistake=True)
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    msg = str(exc.value)
    at = re.match(rf"{re.escape(str(p))}:(\d+):(\d+): \[nfqueue\]", msg)
    assert at and (int(at[1]), int(at[2])) == (line, column) and words in msg, \
        (msg, p.read_text())


@pytest.mark.skipif(not nfq.AVAILABLE, reason="acl built without the NFQUEUE binding")
@pytest.mark.parametrize("seed", range(8))
def test_the_file_without_the_mistake_reads_back_what_it_says(seed, tmp_path):
    p, _ = _policy(seed, tmp_path, mistake=False)
    cfg = NfqueueConfig.from_table(load_policy(p).nfqueue, p)
    assert {k: getattr(cfg, k) for k in READ} == READ
    assert cfg.ports == {22: "sshd"}
    assert cfg.addr_ports == {(socket.inet_pton(socket.AF_INET6, "2001:db8::10"), 8080): "web"}
