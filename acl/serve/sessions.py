"""The SMTP sessions the Postfix door has seen: cps and rate count
connections, not policy requests.

Rules of this file (docs/protocol.md, "Text protocol"):

* smtpd asks at every RCPT TO (and at every stage whose restrictions list
  check_policy_service), over any of the policy connections it keeps.  The
  requests of one SMTP session carry the same ``client_address``,
  ``client_port``, ``server_address`` and ``server_port`` -- the TCP
  connection's four addresses (SMTPD_POLICY_README: client_port since
  Postfix 2.5, server_* since 3.2).  A session is that four-tuple and the
  service.  ``instance`` names a message, not a session.
* The first request of a session is decided as any request: counted for
  xinetd cps and ``[limits]`` rate.  A later one is decided by
  ``Engine.decide_again``: nothing is counted, the first request's refusal
  by a limit is repeated (a connection xinetd turned away stays away, one it
  let in stays in), and the address rules are asked again (a reload may
  have changed them).
* A new connection may reuse an old one's four-tuple (the client port comes
  round again).  It starts a new session, counted, when smtpd says so:
  ``protocol_state=CONNECT`` (asked once per connection), or an
  ``instance`` whose sequence number (its last dot-separated field: smtpd
  writes pid.seconds.microseconds.seqno, the seqno counting the session's
  messages from 0) is 0 while the session's last instance was another one.
  Otherwise the reuse goes unnoticed until the entry is forgotten.
* A request for a service no source binds (``unknown_service``: no limit
  was asked) starts no session.  A request without ``client_port`` (0: an older Postfix, a person with
  socat) names no session and is counted every time.
* Bounded: at most ``MAX_SESSIONS`` entries (the least recently asked is
  dropped first), and an entry is forgotten ``IDLE`` seconds after its last
  request: twice smtpd's ``smtpd_timeout`` default (300 s), the longest smtpd
  waits for a client between two commands.  A session asked again after
  that (a DATA that took longer) is counted once more, as a new connection.
* The memory is the server's: one for every policy connection, kept across
  reloads (a new ``policy_service`` makes new keys).  ``now`` is an
  argument; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict

from acl.engine import limit_refusal
from acl.model import Decision, Reason, Request

MAX_SESSIONS = 65536
IDLE = 600.0

_FIRST = object()        # Sessions.lookup: not a known session, decide and count


def _first_message(instance: str) -> bool:
    """smtpd's instance of a session's first message (seqno 0)."""
    return instance.rpartition(".")[2] == "0"


class Sessions:
    """Session key -> (last asked, last instance, the first request's limit
    refusal or None); see the module rules."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, idle: float = IDLE) -> None:
        self.max_sessions = max_sessions
        self.idle = idle
        self._seen: OrderedDict[tuple, tuple[float, str, Decision | None]] = OrderedDict()
        self.forgotten = 0           # entries dropped for room (not for idleness)

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def key(request: Request) -> tuple | None:
        if not request.client_port:
            return None
        return (request.service, request.client, request.client_port, request.server,
                request.server_port)

    def lookup(self, request: Request, state: str, instance: str, now: float):
        """``_FIRST`` when ``request`` starts a session (decide it and count
        it, then :meth:`remember`), else the first request's limit refusal
        or None (decide it with ``Engine.decide_again``)."""
        key = self.key(request)
        if key is None:
            return _FIRST
        got = self._seen.get(key)
        if got is None:
            return _FIRST
        last, seen, refused = got
        if (now - last > self.idle or state.upper() == "CONNECT"
                or (instance and seen and instance != seen and _first_message(instance))):
            del self._seen[key]
            return _FIRST
        self._seen[key] = (now, instance or seen, refused)
        self._seen.move_to_end(key)
        return refused

    def remember(self, request: Request, instance: str, decision: Decision, now: float) -> None:
        """The first request of a session was decided ``decision``."""
        key = self.key(request)
        if key is None:
            return
        self._seen[key] = (now, instance, decision if limit_refusal(decision) else None)
        self._seen.move_to_end(key)
        # the oldest entries first: drop the idle ones, then any over the bound
        while self._seen:
            k, (last, _, _) = next(iter(self._seen.items()))
            if now - last > self.idle:
                del self._seen[k]
            elif len(self._seen) > self.max_sessions:
                del self._seen[k]
                self.forgotten += 1
            else:
                break

    def decide(self, engine, asked, now: float) -> Decision:
        """Decide one :class:`acl.wire.postfix.Asked` through ``engine``."""
        request = asked.request
        refused = self.lookup(request, asked.state, asked.instance, now)
        if refused is _FIRST:
            decision = engine.decide(request, now)
            if decision.reason is not Reason.UNKNOWN_SERVICE:
                self.remember(request, asked.instance, decision, now)
            return decision
        return engine.decide_again(request, now, refused)
