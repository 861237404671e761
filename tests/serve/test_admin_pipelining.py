"""An admin client that sends many commands in one write (docs/protocol.md
"Admin socket"; acl/serve/conn.py's rules): they are answered in order, one
a turn of the loop -- other clients are answered between them -- and while
it reads none of its answers, no more are made than fit past the server's
backpressure bound.  Found while building test_isolation_mixed.py: a write
of 40,000 ``stats`` held every client up for half a second, and made the
server hold all 40,000 answers.

The server runs in the test's own loop (conftest.in_process), so turns of
the loop and the transport's buffer can be seen; nothing here is timed."""

from __future__ import annotations

import asyncio
import json

from acl.engine import KERNEL, Engine
from acl.serve.conn import ADMIN_MAX_BACKLOG, HIGH_WATER
from acl.serve.server import Server

from .conftest import in_process, policy_toml, until

WAIT = 30.0


def served(tmp_path) -> Server:
    server = Server(Engine.from_path(policy_toml(tmp_path)), compiled=KERNEL == "compiled",
                    log_fn=lambda m: None)
    server.bind()
    return server


def decided(answer: bytes) -> int:
    st = json.loads(answer)
    assert st["ok"], st
    return sum(n for _s, _v, _r, n in st["decisions"])


def test_clients_are_answered_between_pipelined_admin_commands(tmp_path):
    """3,000 ``stats`` in one write, then a decision on the query socket:
    a ``stats`` answered after it counts it.  Before, the 3,000 ran in one
    turn of the loop and every one came before the decision."""
    server = served(tmp_path)
    n = 3000

    async def scenario():
        async with in_process(server, 1, WAIT) as (client,):
            reader, writer = await asyncio.open_unix_connection(server.addresses["admin"])
            try:
                writer.write(b"stats\n" * n)
                first = decided(await asyncio.wait_for(reader.readline(), WAIT))
                d = await asyncio.wait_for(client.decide("sshd", "192.0.2.1"), WAIT)
                assert d.allowed
                rest = [decided(await asyncio.wait_for(reader.readline(), WAIT))
                        for _ in range(n - 1)]
            finally:
                writer.close()
            assert rest == sorted(rest) and rest[-1] == first + 1, (first, rest[-1])

    asyncio.run(scenario())


def test_an_admin_client_that_reads_nothing_stops_being_answered(tmp_path):
    """20,000 ``stats`` (about 10 MB of answers) and nothing read: the
    server stops past HIGH_WATER, holding the rest of the commands, and
    answers every one, in order, once the client reads."""
    server = served(tmp_path)
    n = 20_000

    async def scenario():
        async with in_process(server, 0, WAIT):
            reader, writer = await asyncio.open_unix_connection(server.addresses["admin"])
            try:
                writer.write(b"stats\n" * n)

                def held() -> int:
                    return sum(c.transport.get_write_buffer_size() for c in server._conns
                               if c.protocol == "admin")

                await until(lambda: held() >= HIGH_WATER, "the answers to pass HIGH_WATER", WAIT)
                for _ in range(20):                 # turns of the loop: no answer more
                    await asyncio.sleep(0)
                assert held() < HIGH_WATER + 64 * 1024, held()
                got = [decided(await asyncio.wait_for(reader.readline(), WAIT))
                       for _ in range(n)]
            finally:
                writer.close()
            assert len(got) == n

    asyncio.run(scenario())


def test_short_commands_sent_without_reading_do_not_pile_up(tmp_path):
    """Empty lines, each answered by a short error: 1 MiB of answers takes
    ~15,000 of them, while each read can bring tens of thousands more.  The
    commands waiting to run stay bounded too (ADMIN_MAX_BACKLOG): reading
    stops, and the rest stays in the socket, where the kernel bounds it.
    Before, every line read was queued at once."""
    server = served(tmp_path)
    chunk = b"\n" * 65536

    async def scenario():
        async with in_process(server, 0, WAIT):
            reader, writer = await asyncio.open_unix_connection(server.addresses["admin"])
            try:
                def conn():
                    (c,) = [c for c in server._conns if c.protocol == "admin"]
                    return c

                # 4 MiB of commands, written as fast as the socket takes them
                # (each drain waits for room: the server's reading decides)
                for _ in range(64):
                    writer.write(chunk)
                    try:
                        await asyncio.wait_for(writer.drain(), 0.5)
                    except TimeoutError:
                        break               # the server stopped reading: good
                await until(lambda: conn().transport.get_write_buffer_size() >= HIGH_WATER
                            or conn()._backlog, "the server to stop reading", WAIT)
                for _ in range(50):
                    await asyncio.sleep(0)
                assert len(conn().buf) <= ADMIN_MAX_BACKLOG + 2 * len(chunk), len(conn().buf)
                first = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
                assert first["ok"] is False and first["cause"] == "command", first
            finally:
                writer.close()

    asyncio.run(scenario())
