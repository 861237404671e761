"""Run inside a fresh network namespace (``unshare -n``) by test_live_v6.py.

Usage: ``python3 netns_probe.py TCPSERVER CDB PORT ADDR...``

Brings ``lo`` up, adds each ADDR to it (/128, nodad), starts tcpserver on
``::1`` inside the namespace with ``-H -R -l 0`` running ``env``, connects
once from each address (bound as the source) and prints one JSON object:
``{"added": [...], "answers": {addr: output or ""}}``.  The namespace has no
other interface, so nothing can leave it; tcpserver is killed by its Popen
handle before the script exits.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    tcpserver, cdb, port = argv[0], argv[1], int(argv[2])
    addrs = argv[3:]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    added = []
    for a in addrs:
        r = subprocess.run(["ip", "-6", "addr", "add", f"{a}/128", "dev", "lo", "nodad"],
                           capture_output=True)
        if r.returncode == 0:
            added.append(a)
    p = subprocess.Popen([tcpserver, "-v", "-H", "-R", "-l", "0", "-x", cdb, "::1", str(port),
                          "env"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    answers = {}
    try:
        buf = b""
        deadline = time.monotonic() + 5
        while b"status:" not in buf and time.monotonic() < deadline:
            if select.select([p.stderr], [], [], 0.2)[0]:
                chunk = p.stderr.read1(4096)
                if not chunk:
                    break
                buf += chunk
        if b"status:" not in buf:
            raise RuntimeError(f"tcpserver did not start: {buf!r}")
        for a in added:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.bind((a, 0))
                s.connect(("::1", port))
                data = b""
                for _ in range(1000):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            answers[a] = data.decode("utf-8", "surrogateescape")
    finally:
        p.kill()
        p.wait()
    json.dump({"added": added, "answers": answers}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
