"""Run inside a fresh network namespace (``unshare -n``) by
test_live_ucspi_names.py.

Usage: ``python3 netns_names.py CONFIG.json``; CONFIG names ``dir`` (a work
directory), ``wrap`` (the acl-wrap binary), ``root`` (the tree whose acl
runs as the sidecar), ``port`` (the first of the ports used, one per
tcpserver), ``flag_sets`` (tcpserver flag lists), ``rules``, ``names``
(client -> PTR name), ``forward`` (name -> address, the only A records),
``ident`` (client -> ident user; any other client gets an ident ERROR),
``sidecar_hosts`` (the sidecar's [names] hosts_file), ``hosts_allow`` /
``hosts_deny`` (a hosts_access source for service ``guarded``) and
``clients``.

Brings ``lo`` up; answers DNS on 127.0.0.1:53 (tcpserver's resolver reads
DNSCACHEIP; tests/serve/fake_dns.py) and ident on port 113 (a thread);
starts ``acl serve`` on the policy (tcprules source for ``smtpd``, the rules compiled by the real
``tcprules``); then for each flag set a real ``tcpserver FLAGS -x rules.cdb``
and ``tcpserver FLAGS ... acl-wrap -n smtpd`` running ``env``, and one
``tcpserver ... acl-wrap -n guarded``.  Every client connects once to each
(bound as its source) and the script prints one JSON object:
``{label: {client: the W variable, or "DENY"}}``.  Nothing can leave the
namespace; every process is killed by its Popen handle before it exits.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time


def start_dns(d: str, names: dict, forward: dict) -> subprocess.Popen:
    """tests/serve/fake_dns.py on 127.0.0.1:53 with these records; returns
    once it answers (a bounded wait)."""
    with open(f"{d}/dns.json", "w") as f:
        json.dump({"ptr": names, "a": forward, "drop": []}, f)
    fake = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "serve", "fake_dns.py")
    p = subprocess.Popen([sys.executable, fake, f"{d}/dns.json"], stdin=subprocess.DEVNULL)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.1)
    query = b"\0\1\1\0\0\1\0\0\0\0\0\0" + b"\5probe\0" + b"\0\1\0\1"
    try:
        for _ in range(100):
            probe.sendto(query, ("127.0.0.1", 53))
            try:
                probe.recv(512)
                return p
            except OSError:             # not bound yet: refused, or no answer yet
                time.sleep(0.05)
    finally:
        probe.close()
    p.kill()
    p.wait()
    raise RuntimeError("the fake DNS server never answered")


def identd(users: dict) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 113))
    s.listen(50)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(3)
            line = c.recv(200).decode().strip()
            user = users.get(c.getsockname()[0])
            c.sendall(f"{line} : USERID : UNIX : {user}\r\n".encode() if user else
                      f"{line} : ERROR : NO-USER\r\n".encode())
        except OSError:
            pass
        c.close()


def wait_stderr(p: subprocess.Popen, marker: bytes, what: str) -> None:
    buf = b""
    deadline = time.monotonic() + 20
    while marker not in buf and time.monotonic() < deadline:
        if select.select([p.stderr], [], [], 0.2)[0]:
            chunk = p.stderr.read1(4096)
            if not chunk:
                break
            buf += chunk
    if marker not in buf:
        raise RuntimeError(f"{what} did not start: {buf!r}")


def ask(src: str, port: int) -> str:
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        return "DENY"
    env = dict(line.split("=", 1) for line in data.decode("utf-8", "replace").splitlines()
               if "=" in line)
    return env.get("W", "-")


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        cfg = json.load(f)
    d = cfg["dir"]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    threading.Thread(target=identd, args=(cfg["ident"],), daemon=True).start()
    with open(f"{d}/rules.txt", "w") as f:
        f.write(cfg["rules"])
    subprocess.run(["tcprules", f"{d}/rules.cdb", f"{d}/rules.tmp"], input=cfg["rules"].encode(),
                   check=True)
    for name in ("hosts_allow", "hosts_deny", "sidecar_hosts"):
        with open(f"{d}/{name}", "w") as f:
            f.write(cfg[name])
    with open(f"{d}/policy.toml", "w") as f:
        f.write(f"""\
[sockets]
query = "{d}/query.sock"
admin = "{d}/admin.sock"
admin_uids = [0]
[metrics]
listen = ""
[[source]]
type = "tcprules"
file = "rules.cdb"
services = ["smtpd"]
[[source]]
type = "hosts_access"
allow = "hosts_allow"
deny = "hosts_deny"
services = ["guarded"]
[names]
hosts_file = "sidecar_hosts"
[run]
user = ""
group = ""
watch = false
""")
    env = dict(os.environ, DNSCACHEIP="127.0.0.1", ACL_WRAP_SOCKET=f"{d}/query.sock",
               PYTHONPATH=cfg["root"])
    procs: list[subprocess.Popen] = [start_dns(d, cfg["names"], cfg["forward"])]

    def start(args: list[str], marker: bytes) -> None:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env, cwd=d)
        procs.append(p)
        wait_stderr(p, marker, args[0])

    results: dict[str, dict[str, str]] = {}
    try:
        start([sys.executable, "-m", "acl", "serve", "--config", f"{d}/policy.toml",
               "--allow-pure"], b"ready")
        port = cfg["port"]
        setups = {}
        for flags in cfg["flag_sets"]:
            label = " ".join(flags) or "defaults"
            setups[f"tcpserver {label} -x"] = (["tcpserver", "-v", *flags, "-l", "0", "-x",
                                                f"{d}/rules.cdb", "127.0.0.1", str(port), "env"])
            setups[f"tcpserver {label} acl-wrap"] = (["tcpserver", "-v", *flags, "-l", "0",
                                                      "127.0.0.1", str(port + 1), cfg["wrap"],
                                                      "-n", "smtpd", "env"])
            port += 2
        setups["guarded"] = ["tcpserver", "-v", "-l", "0", "127.0.0.1", str(port), cfg["wrap"],
                             "-n", "guarded", "/bin/sh", "-c", "echo W=served"]
        for args in setups.values():
            start(args, b"status:")
        for label, args in setups.items():
            p = int(args[args.index("127.0.0.1") + 1])
            results[label] = {src: ask(src, p) for src in cfg["clients"]}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
