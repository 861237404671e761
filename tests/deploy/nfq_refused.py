"""An NFQUEUE door that loses CAP_NET_ADMIN after binding (``python -m tests.deploy.nfq_refused``).

Run as root inside the test's server namespace, with an NFQUEUE rule for
``--port`` to ``--queue`` already in place.  Binds the queue, then empties
every capability set of its only thread (what a ``[run] user`` drop did
before it kept CAP_NET_ADMIN), listens on ADDR:PORT, prints ``ready`` and
serves ``--seconds`` while the test connects from its client namespace: the
kernel refuses the verdicts.  Then prints JSON: what the door logged, and
the refused verdicts it counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from pathlib import Path

from acl.engine import Engine
from acl.policy import load_policy
from acl.serve import capabilities
from acl.serve.nfqueue import NfqueueConfig, NfqueueFrontDoor


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


async def scenario(args, door: NfqueueFrontDoor) -> int:
    """Serve ``--seconds`` without the capability; the verdicts the kernel refused."""
    loop = asyncio.get_running_loop()
    door.start(loop)
    capabilities._set(0, 0, 0)          # this thread sends the verdicts
    listener = socket.create_server((args.addr, args.port))
    print("ready", flush=True)
    try:
        await asyncio.sleep(args.seconds)
        return door.queue_counters()[args.queue]["refused_verdicts"]
    finally:
        listener.close()
        door.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    d = Path(args.dir)
    (d / "hosts.allow").write_text("beta: ALL\n")
    (d / "hosts.deny").write_text("")
    (d / "policy.toml").write_text(
        '[sockets]\nquery = "query.sock"\n[[source]]\ntype = "hosts_access"\n'
        'allow = "hosts.allow"\ndeny = "hosts.deny"\nservices = ["beta"]\n')
    keep = Keep()
    logging.getLogger("acl.serve.nfqueue").addHandler(keep)
    door = NfqueueFrontDoor(Engine(load_policy(d / "policy.toml")), NfqueueConfig.from_table(
        {"queues": [args.queue], "ports": {str(args.port): "beta"}}))
    refused = asyncio.run(scenario(args, door))
    print(json.dumps({"logged": keep.lines, "refused": refused}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
