"""Bad clients of the Postfix door, the admin socket and the metrics
address for the mixed isolation test (test_isolation_mixed.py), each with
what docs/protocol.md (and docs/metrics.md) promises it -- the replies in
order and how the connection ends, known by construction.  On the admin
socket they send every command but ``reload`` (the test's reloader owns
the policy files)."""

from __future__ import annotations

import asyncio
import json
import random
import time

from .isolation_policy import POSTFIX_CLIENTS, postfix_request
from .isolation_sockets import (
    NEVER_READ_CAP,
    WAIT,
    Receiver,
    Storm,
    drain,
    finish,
    open_raw,
    pump,
    send,
)

PF_PREFIX = b"action=DEFER_IF_PERMIT acl: bad policy request: "


# -- the Postfix door ----------------------------------------------------------------
#: A request with one defect each (constructor, the reply's reason): answered
#: DEFER_IF_PERMIT, and the connection goes on.
PF_BAD = {
    "noeq": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"no equals sign here",)),
             b"attribute line without '='"),
    "noname": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"=value",)),
               b"attribute line without a name"),
    "utf8": (lambda rng: postfix_request(rng, b"192.0.2.5", add=(b"client_name=caf\xe9",)),
             b"client_name is not UTF-8\n\n"),
    "request": (lambda rng: postfix_request(rng, b"192.0.2.5", drop=b"request",
                                       add=(b"request=junk_policy",)),
                b"request='junk_policy' is not smtpd_access_policy\n\n"),
    "noaddr": (lambda rng: postfix_request(rng, b"", drop=b"client_address"),
               b"no usable client_address\n\n"),
    "badaddr": (lambda rng: postfix_request(rng, b"300.1.2.3"), b"no usable client_address\n\n"),
}


def pf_stream(rng: random.Random) -> tuple[bytes, list[tuple[str, object]], str]:
    """Good and bad requests, then an ending: nothing more, a line past 4096
    bytes or a 257th attribute line (answered, then closed), or a request
    with no empty line (never answered).  Its bytes, what each reply must
    be -- ("good", client) or ("bad", the reply's start after the prefix)
    -- and how the connection ends."""
    parts, wants = [], []
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.5:
            client = rng.choice(POSTFIX_CLIENTS)
            parts.append(postfix_request(rng, client.encode(), crlf=rng.random() < 0.2))
            wants.append(("good", client))
        else:
            make, why = PF_BAD[rng.choice(sorted(PF_BAD))]
            parts.append(make(rng))
            wants.append(("bad", why))
    end = rng.choice(["none", "long", "many", "partial"])
    if end == "long":
        line = b"sender=" + b"x" * rng.randrange(4090, 40000)
        parts.append(line + (b"\n" if rng.random() < 0.5 else b""))
        if len(line) > 4096:
            wants.append(("fatal", b"line too long\n\n"))
        else:
            end = "partial"
    elif end == "many":
        parts.append(b"".join(b"x_%d=1\n" % i for i in range(rng.randrange(257, 400))))
        wants.append(("fatal", b"too many attributes\n\n"))
    elif end == "partial":
        parts.append(postfix_request(rng, b"192.0.2.5")[:-1])
    return b"".join(parts), wants, "closed" if end in ("long", "many") else "open"


def pf_compare(storm: Storm, who: str, wants: list, data: bytes) -> None:
    replies = [r + b"\n\n" for r in data.split(b"\n\n")]
    if replies[-1] != b"\n\n":
        storm.fail(who, f"a reply not ended by an empty line: {replies[-1]!r}")
        return
    replies.pop()
    for i, ((kind, what), got) in enumerate(zip(wants, replies, strict=False)):
        if kind == "good":
            ok = got in storm.oracle.postfix_replies(what)
        else:
            ok = got.startswith(PF_PREFIX + what)
        if not ok:
            storm.fail(who, f"reply {i}: {got!r}, want {kind} {what!r}")
            return
    if len(replies) != len(wants):
        storm.fail(who, f"{len(replies)} replies, want {len(wants)}: {replies[len(wants):]!r}")


async def pf_bad(storm: Storm, rng: random.Random, who: str) -> None:
    blob, wants, ending = pf_stream(rng)
    how = rng.choice(["whole", "chunks", "slow"])
    who = f"{who} {how} {ending}"
    sock = await open_raw(storm.policy)
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, how)
        for kind, _what in wants:
            if kind != "good":
                storm.errors["postfix", 4 if kind == "fatal" else 3] += 1
        await finish(storm, who, sock, rx, ending)
        pf_compare(storm, who, wants, bytes(rx.data))


async def pf_vanish(storm: Storm, rng: random.Random, who: str) -> None:
    """Whole requests and part of one, then gone."""
    blob = b"".join(postfix_request(rng, rng.choice(POSTFIX_CLIENTS).encode())
                    for _ in range(rng.randrange(0, 5)))
    last = postfix_request(rng, b"192.0.2.5")
    sock = await open_raw(storm.policy)
    with sock:
        await send(sock, blob + last[:rng.randrange(1, len(last))], rng, "chunks")


async def pf_never_reads(storm: Storm, rng: random.Random, who: str) -> None:
    """The Postfix door's backpressure: requests until the server stops
    reading, then every whole one is answered, in order."""
    pool = [(postfix_request(rng, c.encode()), c) for c in POSTFIX_CLIENTS * 12]

    def batch(_n: int) -> list:
        return [rng.choice(pool) for _ in range(256)]

    sock = await open_raw(storm.policy)
    with sock:
        sent, made = await pump(storm, who, sock, batch)
        storm.never_read_bytes.append(("postfix", sent))
        if sent >= NEVER_READ_CAP:
            return
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        asked, data = await drain(storm, who, sock, sent, made)
    pf_compare(storm, who, [("good", c) for c in asked], data)

# -- the admin socket and the metrics address ----------------------------------------------
#: admin commands a bad client pipelines, and whether each is one (True) or
#: answered ``"cause": "command"`` (never ``reload``: the reloader's own)
ADMIN_WORDS = {b"stats": True, b"STATS": True, b"dump": True, b"Dump": True,
               b"bogus": False, b"stats extra": False, b"": False, b"reload now": False}


async def admin_pipeline(storm: Storm, rng: random.Random, who: str) -> None:
    """Thousands of commands in one write, nothing read for a while: every
    one answered, in order; or a line past 1024 bytes: closed, unanswered."""
    sock = await open_raw(storm.admin)
    with sock:
        if rng.random() < 0.2:
            await send(sock, b"stats" * rng.randrange(205, 1000), rng, "chunks")
            rx = Receiver(sock)
            if not await rx.ended(WAIT) or rx.data:
                storm.fail(who, f"a long line: {bytes(rx.data[:200])!r}, "
                                f"{'closed' if rx.ended_at else 'not closed'}")
            return
        words = sorted(ADMIN_WORDS)
        asked = [rng.choice(words) for _ in range(rng.randrange(100, 4000))]
        await send(sock, b"".join(w + b"\n" for w in asked), rng, "whole")
        await asyncio.sleep(rng.uniform(0, 1))
        rx = Receiver(sock)
        give_up = time.monotonic() + WAIT
        while rx.data.count(b"\n") < len(asked) and rx.ended_at is None:
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.02)
        rx.stop()
    lines = bytes(rx.data).split(b"\n")
    if lines[0].startswith(b'{"ok": false, "error": "acl serve is out of descriptors'):
        # connected during the flood: refused at once, and closed, as
        # docs/protocol.md says (acl/serve/accept.py's spare descriptor)
        if lines[1:] != [b""] or rx.ended_at is None:
            storm.fail(who, f"refused out of descriptors, then: {bytes(rx.data[:300])!r}")
        return
    if len(lines) != len(asked) + 1 or lines[-1]:
        storm.fail(who, f"{len(lines) - 1} answers to {len(asked)} commands: "
                        f"{bytes(rx.data[:200])!r}")
        return
    for i, (w, line) in enumerate(zip(asked, lines, strict=False)):
        got = json.loads(line)
        if got["ok"] is not ADMIN_WORDS[w] or (not got["ok"] and got.get("cause") != "command"):
            storm.fail(who, f"answer {i} to {w!r}: {line[:200]!r}")
            return


async def metrics_bad(storm: Storm, rng: random.Random, who: str) -> None:
    """Not a GET of /metrics: 404 and closed; a head past 8 KiB: closed."""
    kind = rng.choice(["path", "garbage", "huge"])
    blob = {"path": b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n",
            "garbage": rng.randbytes(rng.randrange(1, 200)).replace(b"\n", b"") + b"\n\n",
            "huge": b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * rng.randrange(8200, 20000)}[kind]
    sock = await open_raw(("127.0.0.1", storm.metrics_port))
    with sock:
        rx = Receiver(sock)
        await send(sock, blob, rng, rng.choice(["whole", "chunks"]))
        if not await rx.ended(WAIT):
            storm.fail(who, f"{kind}: not closed")
        want = b"" if kind == "huge" else b"HTTP/1.1 404 Not Found\r\n"
        if not bytes(rx.data).startswith(want) or (not want and rx.data):
            storm.fail(who, f"{kind}: {bytes(rx.data[:200])!r}")
