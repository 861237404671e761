"""An admin client that shuts down its writing half after its commands
(``echo reload | socat - UNIX-CONNECT:...``; docs/protocol.md "Admin
socket", acl/serve/conn.py's rules) gets every answer, in order, and then
the server closes.  Before, its end-of-file closed the connection: a
``reload`` ran with no answer, and of two commands one was answered.

Both event loops acl runs on, the server in the test's own loop
(conftest.in_process); a client that closes both directions is
test_reload_cli.py's."""

from __future__ import annotations

import asyncio
import json

import pytest

from acl.engine import KERNEL, Engine
from acl.serve.server import Server

from .conftest import in_process, policy_toml

WAIT = 30.0


def run(loop_kind: str, scenario) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(scenario())
        finally:
            loop.close()
    else:
        asyncio.run(scenario())


async def half_closed(server: Server, sent: bytes) -> list[dict]:
    """Send ``sent``, shut the writing half, read until the server closes."""
    reader, writer = await asyncio.open_unix_connection(server.addresses["admin"])
    try:
        writer.write(sent)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), WAIT)   # to end-of-file
    finally:
        writer.close()
    return [json.loads(line) for line in answer.splitlines()]


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
@pytest.mark.parametrize("sent, commands", [
    (b"reload\n", ["reload"]),
    (b"stats\nstats\n", ["stats", "stats"]),
    (b"stats\nreload\nstats", ["stats", "reload", "stats"]),     # the last one without \n
    (b"", []),
    (b"bogus\n", ["bogus"]),
])
def test_a_half_closed_admin_client_gets_every_answer(tmp_path, loop_kind, sent, commands):
    server = Server(Engine.from_path(policy_toml(tmp_path)), compiled=KERNEL == "compiled",
                    log_fn=lambda m: None)
    server.bind()
    reloads = server.engine.reloads["success"]

    async def scenario():
        async with in_process(server, 0, WAIT):
            answers = await half_closed(server, sent)
            assert len(answers) == len(commands), answers
            for command, answer in zip(commands, answers, strict=True):
                if command == "bogus":
                    assert answer["ok"] is False and "bogus" in answer["error"], answer
                else:
                    assert answer["ok"] is True, (command, answer)
                if command == "stats":
                    assert "decisions" in answer
            assert server.engine.reloads["success"] == reloads + commands.count("reload")

    run(loop_kind, scenario)
