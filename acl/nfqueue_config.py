"""The ``[nfqueue]`` table of a policy: queues, the port -> service map, verdict options.

A policy-layer reader (no socket, no event loop, no cffi), so that
``acl.policy.load_policy`` checks the table when the policy is read --
``acl serve --check``, startup and every reload -- and the NFQUEUE front
door (acl.serve.nfqueue) builds its configuration from the same code.

Rules of this file (docs/nfqueue.md says them to admins):

* A port is ASCII decimal digits, 1..65535: ``int()`` would also take
  ``+22``, ``2_2`` and other scripts' digits, each a second spelling of a
  port.  Spaces around a key, its address and its port are ignored.
* ``ADDR:PORT`` holds an IPv4 address, ``[ADDR]:PORT`` an IPv6 one, read
  by the C library's ``inet_pton``: no scope id (a packet carries none, so
  ``fe80::1%eth0`` would match that address on every interface), and no
  IPv4-mapped address (``::ffff:a.b.c.d``: IPv4 packets are looked up by
  their 4-byte address, so the key would never match).
* Two keys spelling one port (``22`` and ``022``, ``[fd00::1]:22`` and
  ``[fd00:0::1]:22``) are refused: TOML gives both, and the one read last
  would win silently.  A port with and without an address is the
  documented override, not a duplicate.
* A boolean is not a number (Python's ``True`` is an int): ``queues =
  [true]`` is refused, not queue 1; so for every numeric key.
* Every message starts with where the mistake is, ``PATH:LINE:COLUMN`` when
  the policy loader gives the position (acl.toml_positions: however the
  key is spelt), and names the key: a bad port at its key, a bad value at
  the value, no ``ports`` at all at the table.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from acl.errors import PolicyError
from acl.ucspi_addr import V4_MAPPED_PREFIX

DEFAULT_REJECT_MARK = 0xAC1
#: The keys of the table; any other is an error.  docs/nfqueue.md and
#: man/acl-policy.toml.5 show each (tests/test_doc_toml.py and
#: tests/test_manpages.py check it).
TABLE_KEYS = ("queues", "ports", "reject", "reject_mark", "malformed", "copy_range",
              "queue_maxlen", "fail_open", "batch", "rcvbuf")


def _port(text: str, where: str) -> int:
    # decimal digits only: int() would also take "+22", "2_2" and other
    # scripts' digits, each a second spelling of a port already mapped
    if not (text.isascii() and text.isdigit()):
        raise PolicyError(f"{where}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise PolicyError(f"{where}: port {port} out of range 1..65535")
    return port


def _number(value: object) -> bool:
    """An integer of the TOML file, not a boolean (a bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_port_key(key: str, where: str) -> tuple[bytes | None, int]:
    """``"22"`` -> (None, 22); ``"10.0.0.1:22"``, ``"[fd00::1]:22"`` -> (packed, 22)."""
    key = str(key).strip()
    if key.startswith("["):
        addr, _, rest = key[1:].partition("]")
        rest = rest.lstrip()
        if not rest.startswith(":"):
            raise PolicyError(f"{where}: {key!r}: write an IPv6 address as [ADDR]:PORT")
        addr, port = addr.strip(), rest[1:].strip()
        family = socket.AF_INET6
    elif key.count(":") > 1:
        raise PolicyError(f"{where}: {key!r}: write an IPv6 address as [ADDR]:PORT")
    elif ":" in key:
        addr, _, port = key.rpartition(":")
        addr, port = addr.strip(), port.strip()
        family = socket.AF_INET
    else:
        return None, _port(key, where)
    # the C library's parser: brackets hold IPv6 only, and no scope id
    # ("fe80::1%eth0" -- a packet's address carries none: it would be
    # dropped silently and match the address on every interface)
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        why = " (brackets hold an IPv6 address)" if family == socket.AF_INET6 else ""
        raise PolicyError(f"{where}: {addr!r} is not a numeric address{why}") from None
    if packed[:12] == V4_MAPPED_PREFIX:
        v4 = socket.inet_ntop(socket.AF_INET, packed[12:])
        raise PolicyError(f"{where}: {addr!r} is an IPv4 address: write it as {v4}:PORT "
                          "(IPv4 packets carry 4-byte addresses)")
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
    def from_table(cls, table: dict, path: object = "policy",
                   position: Callable[[tuple, bool], str] | None = None) -> NfqueueConfig:
        """The ``[nfqueue]`` table, checked.  ``position(keys, at_key)``, when
        given, says where the key path ``keys`` (``("ports", "22")``) is
        written -- ``PATH:LINE:COLUMN``, of the key itself or of its value,
        of the table when the key is not written -- for the error message's
        start (acl/policy.py's; else the message starts with ``path``)."""
        where = f"{path}: [nfqueue]"

        def at(*keys: str, at_key: bool = False) -> str:
            return f"{position(keys, at_key)}: [nfqueue]" if position else where

        for key in table:
            if key not in TABLE_KEYS:
                raise PolicyError(f"{at(key, at_key=True)}: unknown key {key!r}")
        cfg = cls()
        queues = table.get("queues", [0])
        if isinstance(queues, int):
            queues = [queues]
        # a bool is an int to Python: ``queues = [true]`` is not queue 1
        if not isinstance(queues, list) or not queues or not all(
                _number(q) and 0 <= q <= 65535 for q in queues):
            raise PolicyError(f"{at('queues')}: queues must be a list of numbers 0..65535")
        cfg.queues = tuple(dict.fromkeys(queues))
        ports = table.get("ports", {})
        if not isinstance(ports, dict) or not ports:
            raise PolicyError(f"{at('ports')}: ports must map PORT (or ADDR:PORT) to a "
                              "service name")
        first: dict[object, str] = {}     # port or (address, port) -> the key that named it
        for key, service in ports.items():
            # a bad service at its value, a bad port at its key
            if not isinstance(service, str) or not service:
                raise PolicyError(f"{at('ports', key)} ports: {key!r}: service must be a "
                                  "non-empty string")
            addr, port = parse_port_key(key, f"{at('ports', key, at_key=True)} ports")
            slot, found = (cfg.ports, port) if addr is None else (cfg.addr_ports, (addr, port))
            if found in slot:
                raise PolicyError(f"{at('ports', key, at_key=True)} ports: {key!r}: the same "
                                  f"port as {first[found]!r} (mapped to {slot[found]!r})")
            slot[found] = service
            first[found] = key
        for key, allowed in (("reject", ("drop", "reset")), ("malformed", ("drop", "accept"))):
            value = table.get(key, getattr(cfg, key))
            if value not in allowed:
                raise PolicyError(f"{at(key)}: {key} must be one of {', '.join(allowed)}")
            setattr(cfg, key, value)
        for key, lo, hi in (("reject_mark", 1, 0xFFFFFFFF), ("copy_range", 64, 65535),
                            ("queue_maxlen", 1, 1 << 24), ("batch", 1, 4096),
                            ("rcvbuf", 0, 1 << 30)):
            value = table.get(key, getattr(cfg, key))
            if not _number(value) or not lo <= value <= hi:
                raise PolicyError(f"{at(key)}: {key} must be a number {lo}..{hi}")
            setattr(cfg, key, value)
        fail_open = table.get("fail_open", True)
        if not isinstance(fail_open, bool):
            raise PolicyError(f"{at('fail_open')}: fail_open must be true or false")
        cfg.fail_open = fail_open
        return cfg
