"""Run commands where every name is answered by the test: a private network
and mount namespace with its own /etc and a fake DNS server.

:func:`run_commands` starts ``unshare --net --mount`` on this file; inside
(``main``), the script

* brings ``lo`` up -- the namespace has no other interface, so nothing can
  leave it;
* mounts an overlay on /etc whose upper layer holds the test's ``hosts``,
  ``resolv.conf`` (nameserver 127.0.0.1), ``nsswitch.conf``, ``host.conf``
  and ``netgroup``: the real /etc is never written;
* starts tests/serve/fake_dns.py on 127.0.0.1:53 with the test's records
  and waits (bounded) until it has bound its socket;
* runs each command with its own time limit and prints one JSON list:
  ``[{"rc", "stdout", "seconds"}, ...]``.

The fake DNS server exits with this script (it watches its parent); a
command that outlives its limit is killed with its process group (the
group of the process this script started, by its PID).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_DNS = HERE.parent / "serve" / "fake_dns.py"

NSSWITCH = "hosts: files dns\nnetgroup: files\n"
RESOLV = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def unavailable() -> str | None:
    """Why the namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (unshare --net --mount, mount -t overlay)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def run_commands(workdir: Path, *, hosts: str, dns: dict, commands: list[dict],
                 resolv: str = RESOLV, nsswitch: str = NSSWITCH, netgroup: str = "",
                 timeout: float = 300) -> list[dict]:
    """Run ``commands`` (each ``{"argv", "cwd", "env", "timeout"}``) in a fresh
    namespace whose names are ``hosts`` and the fake DNS records ``dns``
    (fake_dns.py's CONFIG)."""
    etc = workdir / "_etc"
    for sub in ("upper", "work"):
        shutil.rmtree(etc / sub, ignore_errors=True)
        (etc / sub).mkdir(parents=True)
    upper = etc / "upper"
    (upper / "hosts").write_text(hosts)
    (upper / "resolv.conf").write_text(resolv)
    (upper / "nsswitch.conf").write_text(nsswitch)
    (upper / "host.conf").write_text("multi on\n")
    (upper / "netgroup").write_text(netgroup)
    cfg = {"etc": str(etc), "dns": {"ptr": {}, "a": {}, "drop": [], **dns},
           "commands": commands}
    (workdir / "_ns.json").write_text(json.dumps(cfg))
    proc = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                           sys.executable, str(Path(__file__)), str(workdir / "_ns.json")],
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"namespace run failed ({proc.returncode}): {proc.stderr!r}")
    return json.loads(proc.stdout)


def _start_dns(cfg_path: str) -> subprocess.Popen:
    ready = cfg_path + ".ready"
    p = subprocess.Popen([sys.executable, str(FAKE_DNS), cfg_path, ready],
                         stdin=subprocess.DEVNULL)
    for _ in range(200):                # 10 s at most
        if os.path.exists(ready):
            return p
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    p.wait()
    raise RuntimeError("the fake DNS server did not start")


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        cfg = json.load(f)
    etc = cfg["etc"]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/etc,upperdir={etc}/upper,workdir={etc}/work", "/etc"],
                   check=True)
    dns_cfg = f"{etc}/dns.json"
    with open(dns_cfg, "w") as f:
        json.dump(cfg["dns"], f)
    dns = _start_dns(dns_cfg)
    results = []
    try:
        for c in cfg["commands"]:
            t0 = time.monotonic()
            # its own process group: a shell's children die with it on a timeout
            p = subprocess.Popen(c["argv"], cwd=c.get("cwd"), env=c.get("env"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            try:
                out, _ = p.communicate(timeout=c.get("timeout", 60))
                rc = p.returncode
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
                rc = "timeout"
            results.append({"rc": rc, "stdout": out.decode("latin-1"),
                            "seconds": time.monotonic() - t0})
    finally:
        dns.kill()
        dns.wait()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
