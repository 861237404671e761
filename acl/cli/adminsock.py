"""One command over a running ``acl serve``'s admin socket, for ``acl query
--admin`` (which prints the answer) and ``acl reload`` (which reads it).

The protocol is docs/protocol.md "Admin socket": one line out, one JSON
object back.  The server may answer and close before it reads the command
(a uid it does not serve): a failed send is then followed by reading that
answer, which is what the user needs to see.  The exit status an answer
means is decided here once, for both commands: 0 ``ok``; 100 (bad input) a
refusal whose ``cause`` is the command or the policy; 111 any other refusal
(a uid not served, a server out of descriptors) and no answer at all.
When no answer comes in time, the message says whether the command was
read (SIOCOUTQ: bytes sent and not yet read by the peer): unread, the
sidecar is taking no connection (stopped, or out of descriptors without
its spare); read, a reload may still be running -- or the socket is not
an admin socket.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios

from acl.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_TEMPORARY


class NoAnswer(Exception):
    """The socket cannot be reached, or gave no JSON answer in time: the
    sentence to print after ``PROG: fatal:`` (always exit 111)."""


def exchange(path: str, command: str, timeout: float) -> dict:
    """Send ``command``, return the server's answer (a JSON object)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            try:
                s.sendall(command.encode() + b"\n")
                unsent = None
            except (BrokenPipeError, ConnectionResetError) as exc:
                unsent = exc
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                if not data:
                    raise
            except TimeoutError:
                raise NoAnswer(f"{path}: no answer within {timeout:g} s: "
                               f"{_silence(s)}") from None
            if unsent is not None and not data:
                raise unsent
    except TimeoutError:            # connecting or sending: the backlog is full
        raise NoAnswer(f"{path}: no answer within {timeout:g} s: the command could not "
                       "be sent (the sidecar takes no connection now: stopped, or out of "
                       "descriptors?)") from None
    except OSError as exc:
        raise NoAnswer(f"cannot reach {path}: {exc}") from None
    try:
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError(reply)
    except ValueError:
        raise NoAnswer(f"no answer from {path}: is it the admin socket?") from None
    return reply


def _silence(s: socket.socket) -> str:
    """What a connection that got no answer says of the server (the module rules)."""
    try:
        # TIOCOUTQ is SIOCOUTQ on Linux (one ioctl number; Python names only the tty one)
        unread = struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        unread = 0
    if unread:
        return ("the command was not read (the sidecar takes no connection now: stopped, "
                "or out of descriptors?)")
    return ("the command was read, not answered: is it the admin socket? (a reload still "
            "running goes on; the sidecar's log says how it ends)")


def exit_status(reply: dict) -> int:
    if reply.get("ok"):
        return EXIT_OK
    return EXIT_BAD_INPUT if reply.get("cause") in ("command", "policy") else EXIT_TEMPORARY
