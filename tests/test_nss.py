"""User, group, protocol and service lookups out of descriptors
(acl/nss.py's rules): a lookup that could not be done raises
OutOfResources -- a reload keeps the running policy as a temporary failure,
a command exits 111 -- and is never taken for "no such user".

Before, each of these read a full descriptor table as "not found": an
xinetd service's ``user``, ``group``, ``protocol`` or port was "unknown"
and the service disabled, a hosts.allow ``user``/``group`` option made its
rule deny, ``[run] user`` was a KeyError and a ``[sockets]`` name "no such
user or group" (bad input, exit 100), and ``acl audit`` lost the
/etc/services name of a port (a covered service shown as open to everyone).

The descriptors run out for real: a child process fills its own table
(RLIMIT_NOFILE ``NOFILE``), then asks.  Each case runs with the C
library's name-service modules as they are when nothing was looked up yet
(``cold``: glibc's getpwnam_r then returns EMFILE) and after a name that
does not exist was looked up (``warm``: libnss_systemd is loaded, and
getpwnam_r then returns no error at all under ``passwd: files systemd`` --
only the descriptor the lookup could not open tells); and, as the control,
with descriptors to spare (``free``), where a name that does not exist is
still "no".  No ports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOFILE = 64
USER = "daemon"                 # in every Debian passwd and group file
MISSING = "acl-no-such-name"

#: What the child asks, then prints as JSON: the answer, or what it raised.
CHILD = textwrap.dedent("""\
    import json, os, pwd, grp, resource, sys
    from pathlib import Path
    from acl import audit
    from acl.errors import OutOfResources
    from acl.parse.hosts_access import parse_hosts
    from acl.parse.xinetd import parse_xinetd_text
    from acl.parse.xinetd_resolve import HostsResolver
    from acl.parse.xinetd_system import SystemLookups
    from acl.serve import privileges

    from acl.policy import _read_sockets

    what, name, state, nofile = sys.argv[1:5]
    XINETD = {
        "xinetd user": "type = INTERNAL UNLISTED\\nport = 7\\nsocket_type = stream\\nuser = {}",
        "xinetd group": "type = INTERNAL UNLISTED\\nport = 7\\nsocket_type = stream\\n"
                        "user = 0\\ngroup = {}",
        "xinetd protocol": "type = INTERNAL UNLISTED\\nport = 7\\nprotocol = {}\\nuser = 0",
        "xinetd port": "type = INTERNAL\\nsocket_type = stream\\nuser = 0",
    }
    system = SystemLookups()
    if state == "warm":                 # every passwd and group module loaded
        for ask in (pwd.getpwnam, grp.getgrnam):
            try:
                ask("acl-no-such-name")
            except KeyError:
                pass
    held = []
    if state != "free":
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), int(nofile)))
        try:
            while True:
                held.append(os.dup(2))
        except OSError:
            pass
    try:
        if what == "python getpwnam":
            out = {"uid": pwd.getpwnam(name).pw_uid}
        elif what in XINETD:
            svc = "echo" if what != "xinetd port" else name
            text = "service " + svc + "\\n{\\n" + XINETD[what].format(name) + "\\n}\\n"
            c = parse_xinetd_text(text, resolver=HostsResolver(), system=system)
            out = {"diagnostics": [str(d) for d in c.diagnostics],
                   "services": sorted(s.id for s in c.services)}
        elif what in ("hosts.allow user", "hosts.allow group"):
            option = what.split()[1]
            t = parse_hosts("hosts.allow", f"sshd: ALL: {option} {name}\\n".encode())
            out = {"error": t.rules[0].options.error}
        elif what == "[run] user":
            out = {"ids": privileges.resolve(name, name)}
        elif what == "[sockets] admin_uids":
            s = _read_sockets({"sockets": {"admin_uids": [name]}}, Path("/p.toml"), None)
            out = {"ids": s.admin_uids}
        elif what == "audit port name":
            entry = audit.SocketEntry("tcp", 4, "0.0.0.0", int(name), "0.0.0.0", 0, 0x0A, 0, 1)
            out = {"names": audit.candidate_names(audit.Listener(entry), {}, {})}
    except OutOfResources as exc:
        out = {"raised": str(exc)}
    except Exception as exc:
        out = {type(exc).__name__: str(exc)}
    for fd in held:
        os.close(fd)
    print(json.dumps(out))
""")

CASES = ["xinetd user", "xinetd group", "xinetd protocol", "xinetd port", "hosts.allow user",
         "hosts.allow group", "[run] user", "[sockets] admin_uids", "audit port name"]
#: what each case looks up, and the name it is asked as
ASKED = {"xinetd user": ("user", USER), "xinetd group": ("group", USER),
         "xinetd protocol": ("protocol", "tcp"), "xinetd port": ("service", "echo"),
         "hosts.allow user": ("user", USER), "hosts.allow group": ("group", USER),
         "[run] user": ("user", USER), "[sockets] admin_uids": ("user", USER),
         "audit port name": ("port", "22")}
#: per kind, a name that has no entry (4/tcp has none in Debian's /etc/services)
MISSING_OF = {"protocol": "acl-no-such-protocol", "port": "4"}


def ask(what: str, name: str, state: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, what, name, state, str(NOFILE)],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_python_says_not_found_out_of_descriptors(state):
    """The premise, measured: Python's getpwnam turns the shortage into
    "name not found" for a user that exists."""
    assert ask("python getpwnam", USER, "free") == {"uid": 1}
    got = ask("python getpwnam", USER, state)
    assert "KeyError" in got and "name not found" in got["KeyError"], got


@pytest.mark.parametrize("state", ["cold", "warm"])
@pytest.mark.parametrize("what", CASES)
def test_a_lookup_out_of_descriptors_is_a_temporary_failure(what, state):
    kind, name = ASKED[what]
    got = ask(what, name, state)
    assert "raised" in got, got
    shown = f"{kind} {name}/tcp" if kind in ("service", "port") else f"{kind} {name!r}"
    assert got["raised"].startswith(f"looking up {shown}: Too many open files"), got
    assert got["raised"].endswith("(acl is out of descriptors or memory: a temporary "
                                  "failure)"), got


@pytest.mark.parametrize("what", CASES)
def test_with_descriptors_to_spare_a_missing_name_is_still_no(what):
    kind, name = ASKED[what]
    missing = MISSING_OF.get(kind, MISSING)
    got = ask(what, missing, "free")
    if what.startswith("xinetd"):
        assert got["services"] == [], got                  # disabled, as xinetd does
        assert any(missing in d for d in got["diagnostics"]), got
    elif what.startswith("hosts.allow"):
        assert got == {"error": f'unknown {kind}: "{missing}"'}, got
    elif what == "[run] user":
        assert "KeyError" in got, got
    elif what == "audit port name":
        assert got == {"names": []}, got
        assert ask(what, name, "free") == {"names": ["ssh"]}
    else:
        assert "PolicyError" in got and "no such user or group" in got["PolicyError"], got
    # and one that exists is found
    got = ask(what, name, "free")
    assert "raised" not in got and "KeyError" not in got, got


def test_a_port_is_asked_in_network_byte_order():
    """getservbyport_r takes the port as struct servent holds it, in network
    byte order.  A port with no entry whose byte-swapped value has one is
    no entry at all -- asked in host order, the re-ask would find the
    swapped port's entry and call the miss a failure to ask (OutOfResources)."""
    import socket

    from acl import nss

    def known(port: int) -> bool:
        try:
            socket.getservbyport(port, "tcp")
            return True
        except OSError:
            return False

    swap = lambda p: ((p & 0xFF) << 8) | (p >> 8)   # noqa: E731
    port = next(swap(p) for p in range(1, 1024) if known(p) and not known(swap(p)))
    with pytest.raises(OSError) as missed:
        nss.getservbyport(port, "tcp")
    assert missed.type is OSError, missed.value              # not OutOfResources
    assert nss.getservbyport(swap(port), "tcp") == socket.getservbyport(swap(port), "tcp")
