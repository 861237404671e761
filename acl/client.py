"""Clients of ``acl serve``'s binary protocol: blocking and asyncio.

Both keep one connection, number requests themselves, and may pipeline:
``decide_many`` writes every request in one write and reads the replies,
which come back in order.  A lease taken with ``lease=True`` lives as long
as the client's connection (or until :meth:`release`): keep the client open
as long as the connection you asked about.

    with Client("/run/acl/query.sock") as c:
        d = c.decide("sshd", "192.0.2.7")
        if not d.allowed: ...
"""

from __future__ import annotations

import asyncio
import itertools
import socket

from acl.errors import ProtocolError
from acl.model import Decision, Request
from acl.wire import binary as wb


def make_request(service: str | Request, client: str | None = None, **kw) -> Request:
    if isinstance(service, Request):
        return service
    if client is None:
        raise TypeError("a client address is required")
    return Request(service, client, **kw)


class _Common:
    def _next_ids(self, n: int) -> list[int]:
        return [next(self._ids) & 0xFFFFFFFF for _ in range(n)]

    @staticmethod
    def _expect(reply: wb.Reply, rid: int, ftype: int) -> wb.Reply:
        if reply.type == wb.T_ERROR:
            raise ProtocolError(f"acl serve: error {reply.code}: {reply.text}")
        if reply.request_id != rid or reply.type != ftype:
            raise ProtocolError(f"reply {reply.type:#x}/{reply.request_id} does not answer "
                                f"request {rid}")
        return reply


class Client(_Common):
    """Blocking client over a Unix socket."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._dec = wb.ReplyDecoder()
        self._pending: list[wb.Reply] = []
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, n: int) -> list[wb.Reply]:
        while len(self._pending) < n:
            data = self._sock.recv(1 << 16)
            if not data:
                raise ConnectionError("acl serve closed the connection")
            self._pending.extend(self._dec.feed(data))
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def decide(self, service: str | Request, client: str | None = None, **kw) -> Decision:
        return self.decide_many([make_request(service, client, **kw)])[0]

    def decide_many(self, requests) -> list[Decision]:
        requests = list(requests)
        ids = self._next_ids(len(requests))
        self._sock.sendall(b"".join(wb.encode_decide(i, r) for i, r in zip(ids, requests,
                                                                            strict=True)))
        return [self._expect(rep, i, wb.T_DECISION).decision
                for rep, i in zip(self._read(len(ids)), ids, strict=True)]

    def release(self, lease_id: int) -> bool:
        (rid,) = self._next_ids(1)
        self._sock.sendall(wb.encode_release(rid, lease_id))
        return self._expect(self._read(1)[0], rid, wb.T_RELEASED).released

    def ping(self) -> str:
        (rid,) = self._next_ids(1)
        self._sock.sendall(wb.encode_ping(rid))
        core = self._expect(self._read(1)[0], rid, wb.T_PONG).core
        return "compiled" if core == 1 else "pure"


class AsyncClient(_Common):
    """asyncio client; requests from several tasks may overlap (pipelining)."""

    def __init__(self, reader, writer) -> None:
        self._reader = reader
        self._writer = writer
        self._dec = wb.ReplyDecoder()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._pump = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: str) -> AsyncClient:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def close(self) -> None:
        self._pump.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionError("acl serve closed the connection")
                for rep in self._dec.feed(data):
                    fut = self._waiting.pop(rep.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(rep)
        except Exception as exc:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(exc)
            self._waiting.clear()

    async def _ask(self, frames: list[bytes], ids: list[int]) -> list[wb.Reply]:
        loop = asyncio.get_running_loop()
        futs = []
        for i in ids:
            fut = loop.create_future()
            self._waiting[i] = fut
            futs.append(fut)
        self._writer.write(b"".join(frames))
        await self._writer.drain()
        return list(await asyncio.gather(*futs))

    async def decide(self, service: str | Request, client: str | None = None, **kw) -> Decision:
        return (await self.decide_many([make_request(service, client, **kw)]))[0]

    async def decide_many(self, requests) -> list[Decision]:
        requests = list(requests)
        ids = self._next_ids(len(requests))
        reps = await self._ask([wb.encode_decide(i, r) for i, r in zip(ids, requests,
                                                                        strict=True)], ids)
        return [self._expect(rep, i, wb.T_DECISION).decision
                for rep, i in zip(reps, ids, strict=True)]

    async def release(self, lease_id: int) -> bool:
        ids = self._next_ids(1)
        (rep,) = await self._ask([wb.encode_release(ids[0], lease_id)], ids)
        return self._expect(rep, ids[0], wb.T_RELEASED).released

    async def ping(self) -> str:
        ids = self._next_ids(1)
        (rep,) = await self._ask([wb.encode_ping(ids[0])], ids)
        return "compiled" if self._expect(rep, ids[0], wb.T_PONG).core == 1 else "pure"
