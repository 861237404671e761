"""Live differential of xinetd's *reader* (sio Srdline + parsesup.c): the
bytes of a line as the parser sees them, against the real xinetd.

* blanks are C ``isspace`` only: U+00A0 or U+001C before an operator or
  around a ``}`` are ordinary characters;
* a line ends at its first NUL (the parser reads a C string);
* a long line is cut where the 8 KiB block reader cuts it (the byte at the
  cut is lost, the rest is read as a new line);
* ``umask`` is strtol base 8 (``0o22``, ``0_22`` are bad values).

Each case is a service whose probe outcome (ran, closed, no socket) must
equal ``acl match --xinetd``'s answer.  Ports: PORTS["xinetd"] + 700..799.
"""

from __future__ import annotations

import pytest

from tests.conftest import PORTS
from tests.xinetd.helpers import svc
from tests.xinetd.live_support import Xinetd, acl_outcomes, probe, require_live

pytestmark = pytest.mark.live

BASE = PORTS["xinetd"][0] + 700


def _service(name: str, port: int, *lines: str) -> str:
    return svc(name, "server_args = ok", *lines, port=port)


def _long_only_from(n: int) -> str:
    """An ``only_from`` line of exactly ``n`` characters: 127.0.0.9 fillers,
    then 127.0.0.2 (so a whole line lets .2 in, a cut one drops the service
    or loses .2)."""
    head, tail, fill = "only_from = ", " 127.0.0.2", ""
    while len(head) + len(fill) + len(tail) + 10 <= n - 2:
        fill += " 127.0.0.9"
    return (head + fill + tail).ljust(n - 2)       # svc() indents by two blanks


def _run(tmp_path, conf: bytes, services: list[str]) -> list[tuple]:
    xd = Xinetd("", len(services))
    with open(xd.conf, "wb") as f:
        f.write(conf)
    try:
        xd.start()
        rows = [(sid, src, probe(BASE + i, src))
                for i, sid in enumerate(services) for src in ("127.0.0.2", "127.0.0.3")]
    finally:
        xd.stop()
    acl = acl_outcomes(tmp_path, conf, rows)
    assert acl == rows
    return rows


def test_blanks_nul_and_umask_match_real_xinetd(tmp_path):
    require_live()
    cases = [
        ("nbsp", ["only_from\u00a0= 127.0.0.2"]),          # no blank before the operator
        ("fs", ["only_from\x1c= 127.0.0.2"]),
        ("plain", ["only_from = 127.0.0.2"]),
        ("nul", ["only_from = 127.0.0.2\0 127.0.0.3"]),     # .3 is past the NUL
        ("nulbrace", ["only_from = 127.0.0.3", "}\0 junk"]),  # the closing brace
        ("umask_o", ["umask = 0o22"]),
        ("umask_u", ["umask = 0_22"]),
        ("umask_ok", ["umask = 022"]),
        # last: a one-word line's name scan runs on past its end (into the next
        # line -- xinetd's overrun, which acl does not follow); at the end of
        # the file it finds nothing, as acl does
        ("nbspbrace", ["only_from = 127.0.0.3", "\u00a0}"]),  # not the closing brace
    ]
    conf = "".join(_service(name, BASE + i, *lines) for i, (name, lines) in enumerate(cases))
    rows = _run(tmp_path, conf.encode(), [name for name, _ in cases])
    got = {(s, c): o for s, c, o in rows}
    assert got["nbsp", "127.0.0.2"] == "refused"
    assert got["nul", "127.0.0.2"] == "ok" and got["nul", "127.0.0.3"] == "closed"
    assert got["nulbrace", "127.0.0.3"] == "ok"
    assert got["umask_o", "127.0.0.2"] == "refused"


def test_long_lines_are_cut_where_real_xinetd_cuts_them(tmp_path):
    """Up to 8191 bytes a line is always whole; longer ones are whole or cut
    depending on where in its 8 KiB block the line starts."""
    require_live()
    sizes = [8191, 8192, 9000, 12000, 16000, 16300, 16383, 16384, 20000]
    conf = "".join(_service(f"L{n}", BASE + i, _long_only_from(n))
                   for i, n in enumerate(sizes))
    rows = _run(tmp_path, conf.encode(), [f"L{n}" for n in sizes])
    outcomes = {o for _, _, o in rows}
    assert {"ok", "closed", "refused"} <= outcomes      # whole lines and cut ones
