"""``acl audit`` against real listeners and a real policy.

The policy is a TOML file with a hosts_access source (loaded by acl.policy,
decided by acl.engine); listeners are opened by the test.  Two settings:

* the host's own network namespace, listeners on 127.0.0.1 and ::1 only
  (loopback-bound sockets are never open to the world);
* a network namespace the test makes (``unshare --net``), where binding the
  wildcard address exposes nothing outside it, to show the "open to
  everyone" flag on sockets the world could reach.

Expected sample outcomes follow from hosts.allow/hosts.deny semantics for
numeric patterns (first match in allow grants, then deny, else grant).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from acl.cli import audit as cli

from .conftest import ROOT, free_ports

pytest.importorskip("acl.compile.tcpw", reason="hosts_access loader not built yet")


def write_policy(tmp_path, nfq_ports: dict[int, str]) -> str:
    (tmp_path / "hosts.allow").write_text(
        "alpha: 127.0.0.1 [::1] 10.0.0.0/255.0.0.0\n"
        "beta: ALL\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    ports = ", ".join(f'{p} = "{s}"' for p, s in nfq_ports.items())
    (tmp_path / "policy.toml").write_text(textwrap.dedent(f"""\
        [sockets]
        query = "query.sock"

        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["alpha", "beta"]

        [nfqueue]
        queues = [0]
        ports = {{ {ports} }}
        """))
    return str(tmp_path / "policy.toml")


def outcomes(listener: dict) -> dict[str, str]:
    return {s["client"]: s["outcome"] for s in listener["samples"]}


def run_main(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def loopback_listeners():
    """alpha: tcp 127.0.0.1; beta: tcp ::1 (NFQUEUE-mapped); none: tcp 127.0.0.1;
    alpha: udp 127.0.0.1."""
    p_alpha, p_beta, p_none, p_udp = free_ports("audit_policy", 4)
    socks = []
    try:
        for fam, host, port, typ in (
            (socket.AF_INET, "127.0.0.1", p_alpha, socket.SOCK_STREAM),
            (socket.AF_INET6, "::1", p_beta, socket.SOCK_STREAM),
            (socket.AF_INET, "127.0.0.1", p_none, socket.SOCK_STREAM),
            (socket.AF_INET, "127.0.0.1", p_udp, socket.SOCK_DGRAM),
        ):
            s = socket.socket(fam, typ)
            s.bind((host, port))
            if typ == socket.SOCK_STREAM:
                s.listen(4)
            socks.append(s)
        yield {"alpha": p_alpha, "beta": p_beta, "none": p_none, "udp": p_udp}
    finally:
        for s in socks:
            s.close()


def test_loopback_listeners_json(tmp_path, capsys, loopback_listeners):
    p = loopback_listeners
    config = write_policy(tmp_path, {p["beta"]: "beta"})
    argv = ["--config", config, "--json", "--service", f"{p['alpha']}=alpha",
            "--service", f"{p['udp']}=alpha"]
    for port in p.values():
        argv += ["--port", str(port)]
    code, out, err = run_main(argv, capsys)
    assert err == ""
    doc = json.loads(out)
    got = {(x["proto"], x["port"]): x for x in doc["listeners"]}
    assert set(got) == {("tcp", p["alpha"]), ("tcp", p["beta"]), ("tcp", p["none"]),
                        ("udp", p["udp"])}
    for x in got.values():
        assert os.getpid() in [proc["pid"] for proc in x["processes"]]

    alpha = got[("tcp", p["alpha"])]
    assert alpha["address"] == "127.0.0.1"
    assert (alpha["service"], alpha["layers"], alpha["enforced_by"]) == \
        ("alpha", ["hosts_access"], "daemon must ask")
    o = outcomes(alpha)
    # A 127.0.0.1-bound socket: reachable from IPv4 loopback only.
    assert o == {"127.0.0.1": "allow", "::1": "unreachable",
                 "10.11.12.13": "unreachable", "172.16.5.4": "unreachable",
                 "192.168.1.10": "unreachable", "fd00::10": "unreachable",
                 "198.51.100.23": "unreachable", "203.0.113.77": "unreachable",
                 "2001:db8::23": "unreachable"}
    assert alpha["samples"][0]["location"].endswith("hosts.allow:1")

    beta = got[("tcp", p["beta"])]
    assert (beta["service"], beta["layers"], beta["enforced_by"]) == \
        ("beta", ["nfqueue", "hosts_access"], "nfqueue")
    assert outcomes(beta)["::1"] == "allow"

    none = got[("tcp", p["none"])]
    assert (none["service"], none["layers"], none["enforced_by"]) == (None, [], "none")
    assert outcomes(none)["127.0.0.1"] == "no policy"

    udp = got[("udp", p["udp"])]
    assert (udp["service"], udp["layers"]) == ("alpha", ["hosts_access"])
    # Loopback-bound: nothing here is open to everyone, so exit 0.
    assert not any(x["open_to_everyone"] for x in got.values())
    assert code == 0


def test_loopback_listeners_table(tmp_path, capsys, loopback_listeners):
    p = loopback_listeners
    config = write_policy(tmp_path, {p["beta"]: "beta"})
    code, out, _ = run_main(["--config", config, "--service", f"{p['alpha']}=alpha",
                             "--port", str(p["alpha"]), "--port", str(p["none"])], capsys)
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["PROTO", "LISTEN", "PROCESS", "SERVICE", "LAYERS"]
    row_alpha = next(x for x in lines if f"127.0.0.1:{p['alpha']}" in x).split()
    assert row_alpha[3:9] == ["alpha", "hosts_access", "daemon", "must", "ask", "allow"]
    row_none = next(x for x in lines if f"127.0.0.1:{p['none']}" in x).split()
    assert row_none[3:6] == ["-", "-", "none"]
    assert "OPEN TO EVERYONE" not in out
    assert lines[-1] == f"policy: {config}; 2 listening sockets, 0 open to everyone"
    assert code == 0


def test_bad_arguments_and_bad_policy(tmp_path, capsys):
    code, _, err = run_main(["--service", "notaport"], capsys)
    assert code == 100 and "PORT=NAME" in err
    (tmp_path / "policy.toml").write_text("[[source]]\ntype = \"nonsense\"\n")
    code, _, err = run_main(["--config", str(tmp_path / "policy.toml")], capsys)
    assert code == 100 and "nonsense" in err
    code, _, err = run_main(["--config", str(tmp_path / "missing.toml")], capsys)
    assert code == 100 and "missing.toml" in err


def test_no_proc_is_a_temporary_failure_not_an_empty_host(tmp_path, capsys):
    """Without /proc/net (no /proc mounted) the audit cannot see a socket:
    exit 111, not "0 listening sockets, 0 open to everyone" and exit 0.  A
    kernel without IPv6 has only the IPv4 tables: that is a host with no
    IPv6 socket."""
    code, out, err = run_main(["--no-policy", "--proc", str(tmp_path)], capsys)
    assert (code, out) == (111, "") and "cannot read sockets" in err, err
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt" \
             "   uid  timeout inode\n"
    for name in ("tcp", "udp"):
        (tmp_path / "net" / name).write_text(header)
    code, out, err = run_main(["--no-policy", "--proc", str(tmp_path)], capsys)
    assert code == 0 and "0 listening sockets" in out, err


# -- the world's view, inside a private network namespace ---------------------

NETNS_SCRIPT = r"""
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
spec = json.loads(sys.argv[1])
socks = []
for fam, host, port, kind in spec["listen"]:
    s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET,
                      socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.bind((host, port))
    if kind == "tcp":
        s.listen(4)
    socks.append(s)
from acl.cli import audit
sys.exit(audit.main(spec["argv"]))
"""


def run_in_netns(spec):
    try:
        return subprocess.run(["unshare", "--net", sys.executable, "-c", NETNS_SCRIPT,
                               json.dumps(spec)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    except FileNotFoundError:
        pytest.skip("unshare not installed")


def test_open_to_everyone_in_a_private_netns(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("unshare --net needs root")
    # Ports inside the namespace collide with nothing outside it, but stay
    # in the area's range anyway.
    p_alpha, p_beta, p_gamma, p_local, p_udp = range(27150, 27155)
    config = write_policy(tmp_path, {p_beta: "beta"})
    spec = {
        "listen": [(4, "0.0.0.0", p_alpha, "tcp"), (6, "::", p_beta, "tcp"),
                   (4, "0.0.0.0", p_gamma, "tcp"), (4, "127.0.0.1", p_local, "tcp"),
                   (4, "0.0.0.0", p_udp, "udp")],
        "argv": ["--config", config, "--json", "--service", f"{p_alpha}=alpha",
                 "--service", f"{p_udp}=alpha"],
    }
    out = run_in_netns(spec)
    if out.returncode not in (0, 1):
        if "Operation not permitted" in out.stderr:
            pytest.skip(f"cannot make a network namespace here: {out.stderr.strip()}")
        raise AssertionError(out.stderr)
    doc = json.loads(out.stdout)
    got = {(x["proto"], x["port"]): x for x in doc["listeners"]}
    # The namespace holds our five sockets and nothing else.
    assert set(got) == {("tcp", p_alpha), ("tcp", p_beta), ("tcp", p_gamma),
                        ("tcp", p_local), ("udp", p_udp)}
    flagged = {k[1] for k, x in got.items() if x["open_to_everyone"]}
    # beta: hosts.allow grants ALL; gamma: no policy at all; both on wildcards.
    assert flagged == {p_beta, p_gamma}
    assert out.returncode == 1          # findings
    a = outcomes(got[("tcp", p_alpha)])
    assert a == {"127.0.0.1": "allow", "::1": "unreachable", "10.11.12.13": "allow",
                 "172.16.5.4": "deny", "192.168.1.10": "deny", "fd00::10": "unreachable",
                 "198.51.100.23": "deny", "203.0.113.77": "deny",
                 "2001:db8::23": "unreachable"}
    b = got[("tcp", p_beta)]
    assert b["enforced_by"] == "nfqueue"
    # A dual-stack [::] socket is reachable by every sample, v4 and v6.
    assert set(outcomes(b).values()) == {"allow"}
    g = outcomes(got[("tcp", p_gamma)])
    assert g["198.51.100.23"] == "no policy" and g["::1"] == "unreachable"
    assert not got[("tcp", p_local)]["open_to_everyone"]
    assert outcomes(got[("udp", p_udp)]) == a


def test_each_rule_language_is_named_as_a_layer(tmp_path):
    """xinetd, tcprules and hosts_access sources, each covering a wildcard listener."""
    if os.geteuid() != 0:
        pytest.skip("unshare --net needs root")
    p_gamma, p_alpha, p_other = 27160, 27161, 27162
    (tmp_path / "xinetd.conf").write_text(textwrap.dedent(f"""\
        service gamma
        {{
            type = UNLISTED
            socket_type = stream
            protocol = tcp
            port = {p_gamma}
            wait = no
            user = root
            server = /bin/true
            only_from = 127.0.0.1 10.0.0.0/8
        }}
        """))
    (tmp_path / "rules.txt").write_text('127.:allow\n10.11.:allow,RELAYCLIENT=""\n:deny\n')
    (tmp_path / "hosts.allow").write_text("ALL: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    (tmp_path / "policy.toml").write_text(textwrap.dedent("""\
        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["alpha", "gamma"]

        [[source]]
        type = "tcprules"
        file = "rules.txt"
        services = ["alpha"]

        [[source]]
        type = "xinetd"
        file = "xinetd.conf"
        """))
    spec = {
        "listen": [(4, "0.0.0.0", p, "tcp") for p in (p_gamma, p_alpha, p_other)],
        # gamma is found by the port its xinetd entry names; alpha is named.
        "argv": ["--config", str(tmp_path / "policy.toml"), "--json",
                 "--service", f"{p_alpha}=alpha"],
    }
    out = run_in_netns(spec)
    assert out.returncode == 1, out.stderr          # p_other: no policy, open
    got = {x["port"]: x for x in json.loads(out.stdout)["listeners"]}
    # Whatever order the file lists them in, the engine's order is shown.
    assert got[p_gamma]["service"] == "gamma"
    assert got[p_gamma]["candidate_names"][0] == "gamma"
    assert got[p_gamma]["layers"] == ["xinetd", "hosts_access"]
    assert got[p_alpha]["layers"] == ["tcprules", "hosts_access"]
    assert got[p_other]["layers"] == [] and got[p_other]["open_to_everyone"]

    def why(port):
        return {s["client"]: (s["outcome"], s["reason"], s["location"].rsplit("/", 1)[-1])
                for s in got[port]["samples"] if s["outcome"] != "unreachable"}

    assert why(p_gamma) == {
        "127.0.0.1": ("allow", "ok", "hosts.allow:1"),
        "10.11.12.13": ("allow", "ok", "hosts.allow:1"),
        "172.16.5.4": ("deny", "address", "xinetd.conf:1"),
        "192.168.1.10": ("deny", "address", "xinetd.conf:1"),
        "198.51.100.23": ("deny", "address", "xinetd.conf:1"),
        "203.0.113.77": ("deny", "address", "xinetd.conf:1"),
    }
    assert why(p_alpha) == {
        "127.0.0.1": ("allow", "ok", "hosts.allow:1"),
        "10.11.12.13": ("allow", "ok", "hosts.allow:1"),
        "172.16.5.4": ("deny", "tcprules", "rules.txt:3"),
        "192.168.1.10": ("deny", "tcprules", "rules.txt:3"),
        "198.51.100.23": ("deny", "tcprules", "rules.txt:3"),
        "203.0.113.77": ("deny", "tcprules", "rules.txt:3"),
    }
    assert not got[p_gamma]["open_to_everyone"] and not got[p_alpha]["open_to_everyone"]


def test_nfqueue_port_keys_with_addresses(tmp_path):
    """``[nfqueue] ports`` keys PORT, ADDR:PORT and [ADDR]:PORT, on made-up listeners."""
    from acl import audit
    from acl.errors import AclError

    config = write_policy(tmp_path, {})
    text = (tmp_path / "policy.toml").read_text().replace(
        "ports = {  }",
        'ports = { "127.0.0.1:27170" = "beta", "[::1]:27171" = "beta", 27172 = "beta" }')
    (tmp_path / "policy.toml").write_text(text)
    view = audit.load_policy_view(config)
    assert view.nfqueue_ports == {("127.0.0.1", 27170): "beta", ("::1", 27171): "beta",
                                  (None, 27172): "beta"}

    def lis(addr, port):
        fam = 6 if ":" in addr else 4
        zero = "::" if fam == 6 else "0.0.0.0"
        return audit.Listener(audit.SocketEntry("tcp", fam, addr, port, zero, 0, 0x0A, 0, 1))

    found = [lis("127.0.0.1", 27170), lis("0.0.0.0", 27170), lis("::1", 27171),
             lis("0.0.0.0", 27172), lis("::", 27172)]
    got = [(f.listener.address, f.listener.port, f.service, f.enforced_by)
           for f in audit.audit(found, view)]
    assert got == [
        ("127.0.0.1", 27170, "beta", "nfqueue"),
        # Only 127.0.0.1's packets are queued: the wildcard socket is not covered.
        ("0.0.0.0", 27170, None, "none"),
        ("::1", 27171, "beta", "nfqueue"),
        ("0.0.0.0", 27172, "beta", "nfqueue"),
        ("::", 27172, "beta", "nfqueue"),
    ]
    (tmp_path / "policy.toml").write_text(text.replace('"[::1]:27171"', '"[::1:27171"'))
    # refused by load_policy's [nfqueue] check before the audit reads the map
    with pytest.raises(AclError, match=r"\[nfqueue\] ports: '\[::1:27171': write an IPv6 "
                                       r"address as \[ADDR\]:PORT"):
        audit.load_policy_view(config)


def test_an_xinetd_service_without_a_socket_names_no_port(tmp_path):
    """A ``TCPMUX`` service is reached through tcpmux's port 1 and an RPC one
    on the portmapper's port: xinetd opens no socket on the port
    /etc/services gives their names (xinetd 2.3.15.3 with a ``TCPMUX
    UNLISTED`` smtp listens on nothing), so the audit must not name that
    port's listener after them -- before, a Postfix on 25 was audited as
    the xinetd service "mux-smtp".  A ``port`` line changes nothing (the
    same xinetd, a TCPMUX service with ``port = N``: nothing listens on N)."""
    from acl import audit

    (tmp_path / "xinetd.conf").write_text(textwrap.dedent("""\
        service smtp
        {
            id = mux-smtp
            type = TCPMUX UNLISTED
            socket_type = stream
            protocol = tcp
            wait = no
            user = root
            server = /bin/true
        }
        service finger
        {
            id = mux-finger-with-port
            type = TCPMUXPLUS UNLISTED
            socket_type = stream
            protocol = tcp
            port = 27164
            wait = no
            user = root
            server = /bin/true
        }
        service rstatd
        {
            type = RPC UNLISTED
            socket_type = dgram
            protocol = udp
            wait = yes
            user = root
            rpc_version = 2-4
            rpc_number = 100001
            server = /bin/true
        }
        service gamma
        {
            type = UNLISTED
            socket_type = stream
            protocol = tcp
            port = 27163
            wait = no
            user = root
            server = /bin/true
        }
        """))
    (tmp_path / "policy.toml").write_text('[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    view = audit.load_policy_view(str(tmp_path / "policy.toml"))
    assert view.service_ports == {("tcp", 27163): "gamma"}
    smtp = audit.Listener(audit.SocketEntry("tcp", 4, "0.0.0.0", 25, "0.0.0.0", 0, 0x0A, 0, 1),
                          [audit.Process(4242, "master")])
    (found,) = audit.audit([smtp], view)
    assert found.names == ["master", "smtp"] and found.service is None


def test_out_of_descriptors_is_a_temporary_failure_not_a_bad_policy(tmp_path):
    """A policy load that runs out of descriptors exits 111 (acl.cli's
    promise for every command), not 100 "a policy that does not load":
    the child loads once (its imports), fills its descriptor table, then
    audits again."""
    (tmp_path / "hosts.allow").write_text("alpha: ALL\n")
    (tmp_path / "hosts.deny").write_text("")
    (tmp_path / "policy.toml").write_text(
        '[[source]]\ntype = "hosts_access"\nallow = "hosts.allow"\ndeny = "hosts.deny"\n'
        'services = ["alpha"]\n')
    child = textwrap.dedent("""\
        import contextlib, io, os, resource, sys
        from acl.cli import main
        argv = ["audit", "--config", sys.argv[1], "--port", "1"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) in (0, 1)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(os.dup(2))
        except OSError:
            pass
        code = main(argv)
        for fd in held:
            os.close(fd)
        print(code)
        """)
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "policy.toml")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "111", out
    assert out.stderr.startswith("acl audit: fatal: ") and "Too many open files" in out.stderr


def _fake_proc(root, sockets) -> str:
    """A /proc whose net tables hold ``sockets``: (table, hex address, port,
    state); no process owns them (no /proc/PID)."""
    head = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
            "   uid  timeout inode\n")
    (root / "net").mkdir(parents=True)
    tables = {name: [head] for name in ("tcp", "tcp6", "udp", "udp6")}
    for n, (table, addr, port, state) in enumerate(sockets):
        zero = "0" * len(addr)
        tables[table].append(f"{n:4}: {addr}:{port:04X} {zero}:0000 {state:02X} "
                             f"00000000:00000000 00:00000000 00000000     0        0 {9000 + n}\n")
    for name, lines in tables.items():
        (root / "net" / name).write_text("".join(lines))
    return str(root)


def test_the_table_flags_and_filters_made_up_sockets(tmp_path, capsys):
    """Sockets from a made-up /proc (the command's own reading of it), a
    hosts_access policy with a twist and ``[limits] rate``:

    * a service whose world samples are delegated (twist) is open to
      everyone: the daemon runs the command for anyone;
    * a class whose samples differ is summed up with delegate counted as
      allowed ("3/4 allow");
    * a port known by a name no layer binds is uncovered, "rate" or not
      (rate applies only to a service some layer binds);
    * a wildcard socket is decided with the server address unknown (a
      client may arrive on any address): ``gamma@0.0.0.0/0.0.0.0`` (any
      server address) does not match it;
    * IPv6 endpoints in brackets; ``--proto`` keeps that protocol only."""
    (tmp_path / "hosts.allow").write_text(
        "alpha: 127.0.0.1 10.0.0.0/8\n"
        "beta: 10.0.0.0/8 [fd00::]/8: twist /bin/echo no\n"
        "beta: 127.0.0.1 [::1] 172.16.0.0/12\n"
        "beta: 198.51.100.0/24 203.0.113.0/24 [2001:db8::]/32: twist /bin/echo no\n"
        "gamma@0.0.0.0/0.0.0.0: ALL\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    (tmp_path / "policy.toml").write_text(textwrap.dedent("""\
        [limits]
        rate = 5

        [[source]]
        type = "hosts_access"
        allow = "hosts.allow"
        deny = "hosts.deny"
        services = ["alpha", "beta", "gamma"]
        """))
    proc = _fake_proc(tmp_path / "proc", [
        ("tcp", "00000000", 2201, 0x0A), ("tcp6", "0" * 32, 2202, 0x0A),
        ("udp", "00000000", 2201, 0x07), ("tcp", "00000000", 2204, 0x0A),
        ("tcp", "00000000", 2205, 0x0A)])
    argv = ["--config", str(tmp_path / "policy.toml"), "--proc", proc,
            "--service", "2201=alpha", "--service", "2202=beta", "--service", "2204=delta",
            "--service", "2205=gamma"]
    code, out, err = run_main([*argv, "--json"], capsys)
    assert code == 1, err
    got = {(x["proto"], x["port"]): x for x in json.loads(out)["listeners"]}
    assert got["tcp", 2202]["open_to_everyone"]                     # delegated to the world
    assert outcomes(got["tcp", 2202])["203.0.113.77"] == "delegate"
    assert not got["tcp", 2201]["open_to_everyone"]
    assert (got["tcp", 2204]["service"], got["tcp", 2204]["layers"]) == (None, [])
    assert got["tcp", 2204]["open_to_everyone"]
    assert got["tcp", 2201]["layers"] == ["rate", "hosts_access"]
    assert set(outcomes(got["tcp", 2205]).values()) - {"unreachable"} == {"deny"}   # no server
    code, out, err = run_main(argv, capsys)
    # PRIVATE: 10.11.12.13 and fd00:: delegated, 172.16.5.4 allowed, 192.168.1.10 denied
    assert re.search(r"^tcp +\[::\]:2202 .* 3/4 allow +delegate +OPEN TO EVERYONE$", out,
                     re.M), out
    code, out, err = run_main([*argv, "--proto", "udp"], capsys)
    assert [line.split()[0] for line in out.splitlines()[1:-2]] == ["udp"], out
