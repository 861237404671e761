"""The running sidecar: sockets, signals, reloads, life cycle.

Theory of operation:

* Start: load the policy, build the engine, then get every listening socket
  -- from systemd (``LISTEN_FDS``) when it passed them, else bind them
  ourselves (query, optional Postfix policy, optional admin Unix sockets,
  optional metrics TCP address), each socket file made with its mode by
  bind(2) itself under a matching umask and given its group by lchown --
  never a chmod or chown by a path that follows a symlink -- then drop privileges (``[run] user/group/chroot``; with
  ``[nfqueue]`` CAP_NET_ADMIN alone survives, and must), then serve and tell
  systemd ``READY=1``.  Binding first is what lets an unprivileged
  server own sockets in root-only directories.
* Accepting is ours (acl/serve/accept.py), on asyncio's loop and uvloop's
  alike: the kernel backlog is ``LISTEN_BACKLOG``; running out of
  descriptors pauses that socket for a second (an admin client is told so
  at once, through a spare descriptor), is counted
  (``acl_accept_errors_total``) and logged at most once a minute.
* A socket path is taken over only when nothing answers on it: we connect
  first; a live server (another ``acl serve`` on the same config) makes us
  refuse to start, a refused connect means a stale file from a run that
  did not clean up, which is replaced.  When any bind fails, every socket
  bound so far is closed and its file removed: a failed start leaves
  nothing behind and touches nothing a running server owns; so does a
  failure after binding (starting the NFQUEUE door, dropping privileges).
* Reload: SIGHUP, the admin command ``reload``, or a change to a watched file
  (polled once a second; the policy file and every rule file it names).
  The watcher compares each file with its stamp taken BEFORE the running
  policy read it (``Policy.stamps``; after a failed reload, the stat taken
  before that attempt), never with one taken after: a file changed while a
  reload reads it, or between the read and the swap, differs at the next
  poll and is read again -- a slow writer's file is reloaded until it
  settles.  The watcher does not poll while a reload runs.
  Reading and compiling run in a worker thread (``Engine.prepare``) while the
  loop keeps answering; the swap (``Engine.commit``) is one assignment made
  in the loop.  A failure keeps the running policy, is counted, is logged as
  ``file:line:column: message`` and is the admin's answer.  One that ran
  out of descriptors or memory reading the files (``OutOfResources``, a
  connection flood: acl/rulefiles.py) is no verdict on them: it has no
  ``cause`` (``acl reload``: 111, temporary), is logged at most once a
  minute, and puts the watcher's baseline back to the running policy's, so
  a changed file is tried again at the next poll.  A success logs
  the new policy's diagnostics (rules the real tool would skip or disable)
  one a line, as startup does, before ``reloaded``, and returns them in the
  admin's answer (``"diagnostics"``).  Only one reload runs at a time;
  triggers during one make exactly one more.
* Leases across a restart (``[run] keep_leases``, systemd's fd store):
  acl/serve/leasestore.py.  At start the connections systemd kept are
  adopted (their leases counted again) before anything is accepted; at a
  stop they are handed over (``_hand_over``) before the rest is closed.
* Stop: SIGTERM or SIGINT -> ``STOPPING=1``, stop listening, close every
  client (their leases are released), remove the socket files we made, and
  exit at once (files a dropped user may not remove are named in one log
  line; the next start replaces them): a name lookup or reload compile still running is abandoned
  (its threads are daemon threads, acl/workers.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures.thread  # noqa: F401  (imported before a chroot can hide it)
import errno
import os
import resource
import signal
import socket
import stat
import sys
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from acl.errors import AclError, OutOfResources, PolicyError, RuleSyntaxError
from acl.metrics import AclCollector, make_registry
from acl.names import NameService
from acl.serve import (
    accept,
    capabilities,
    conn,
    leasestore,
    lookups,
    privileges,
    sessions,
    systemd,
)
from acl.wire.admin import ADMIN_COMMANDS
from acl.workers import DaemonPool

LISTEN_BACKLOG = 4096
#: Worker threads for client name lookups when no policy is loaded yet: a
#: slow DNS server holds one each, so the pool grows (up to ``[names]
#: threads``) when every thread is busy (acl/serve/lookups.py).
NAME_THREADS = 8
#: rounds of lookups for one request (look_up_names): its name, then each
#: netgroup the rules ask of it in turn
NAME_ROUNDS = 16


def log(msg: str) -> None:
    print(f"acl serve: {msg}", file=sys.stderr, flush=True)


def _answers(path: str) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``
    (False: a stale file -- ECONNREFUSED -- or none; OSError: cannot tell)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)             # a full backlog is EAGAIN, not a wait
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True
    finally:
        probe.close()
    return True


def _bind_unix(path: str, mode: int) -> socket.socket:
    """A listening Unix socket at ``path``, made with permissions ``mode``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISSOCK(st.st_mode):
            try:
                live = _answers(path)
            except OSError as exc:
                raise AclError(f"{path}: cannot tell whether a server answers there: "
                               f"{exc.strerror}") from None
            if live:
                raise AclError(f"{path}: a server is answering on this socket "
                               "(is acl serve already running?)")
            os.unlink(path)              # a stale socket from an earlier run
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # the file is born with its mode: bind(2) makes it 0777 & ~umask.  A
    # chmod by path afterwards would follow whatever the directory's owner
    # put there meanwhile (a symlink to /etc/shadow, chmodded by root), and
    # Linux has no lchmod.  umask is process-wide: bind runs before any
    # thread of ours starts (the executors start theirs on first use).
    old = os.umask(0o777 & ~mode)
    try:
        s.bind(path)
    except BaseException:
        s.close()
        raise
    finally:
        os.umask(old)
    s.listen(LISTEN_BACKLOG)
    return s


def _bind_tcp(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(128)
    return s


def _bind_error(name: str, where: str, exc: OSError) -> AclError:
    """A bind that failed, named by socket and path (the bare OSError names
    neither).  A directory acl may not write -- acl.service's ProtectSystem=
    makes /run read-only to it -- is a socket systemd must make and pass."""
    why = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and name != "metrics":
        hint = (f" (under systemd, let a socket unit make it and pass it as "
                f"FileDescriptorName={name}: deploy/systemd/acl*.socket)")
    return AclError(f"{name} socket {where}: {why}{hint}")


def raise_nofile() -> int:
    """One descriptor per client: take the whole hard limit (default soft
    limits of 1024 would cap the clients served)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


class Server:
    def __init__(self, engine, *, compiled: bool, build: str | None = None,
                 pure_parts: tuple[str, ...] = (), log_fn=log) -> None:
        self.engine = engine
        self.compiled = compiled        # every core module compiled (PONG says so)
        # what stats and acl_core_info report: acl.core.BUILD ("compiled",
        # "pure", "mixed") and PURE_PARTS; from ``compiled`` when not given
        self.build = build or ("compiled" if compiled else "pure")
        self.pure_parts = tuple(pure_parts)
        self.log = log_fn
        pol = engine.policy
        self.sockets = pol.sockets          # as bound at start; reloads change rules only
        self.clients = {"binary": 0, "postfix": 0}
        # the SMTP sessions the Postfix door has counted (every policy
        # connection's; kept across reloads)
        self.postfix_sessions = sessions.Sessions()
        self.protocol_errors: dict[tuple[str, int], int] = {}
        self.accept_stats = accept.AcceptStats()    # accepts that ran out of descriptors
        self.registry = make_registry()
        self.collector = AclCollector(engine, self, self.build)
        self.registry.register(self.collector)
        self._conns: set = set()
        # systemd's fd store for leases (leasestore.py); None: off
        self.lease_store: leasestore.LeaseStore | None = None
        self._adopted: list[leasestore.Adopted] = []
        self._keep_leases = 0                 # [run] keep_leases as read at start
        self.front_doors: list = []       # doors registered by add_front_door
        self._servers: list = []
        self._made_paths: list[str] = []
        self._sockets: dict[str, socket.socket] = {}
        self._reloading: asyncio.Task | None = None
        self._again = False
        self._shortage_logged: float | None = None   # when a reload short of resources was
        self._stop: asyncio.Event | None = None
        self._watch_state: dict = {}
        self.chroot = ""
        self.addresses: dict[str, str] = {}
        # reloads read and compile here, off the loop (one at a time)
        # (daemon threads: a stop never waits for them; acl/workers.py)
        self._executor = DaemonPool(1, "reload")
        # client name lookups (acl.names): blocking C library calls, made here
        cfg = pol.names
        self._name_executor = DaemonPool(cfg.threads, "names")
        # at most [names] per_network lookups per client network at once
        self.lookup_scheduler = lookups.LookupScheduler(self._name_executor, cfg.per_network)
        self._name_pending: dict[tuple[str, str], asyncio.Future] = {}
        # names a decision went without (acl_name_lookups_unanswered_total):
        # counted per request and item, as the decision saw it
        self.names_unanswered = {"shed": 0, "deadline": 0, "error": 0}

    @property
    def policy_service(self) -> str:
        """The Postfix door's service, as the running policy names it: no
        socket changes with it, so a reload applies it to every request read
        after the swap (PostfixConnection reads it before each read)."""
        return self.engine.policy.sockets.policy_service

    # -- bookkeeping used by connections -------------------------------
    def connected(self, c) -> None:
        self._conns.add(c)
        if c.protocol in self.clients:
            self.clients[c.protocol] += 1

    def disconnected(self, c) -> None:
        self._conns.discard(c)
        if c.protocol in self.clients:
            self.clients[c.protocol] -= 1

    def protocol_error(self, protocol: str, code: int) -> None:
        k = (protocol, code)
        self.protocol_errors[k] = self.protocol_errors.get(k, 0) + 1

    def admin_allowed(self, uid: int, gid: int) -> bool:
        s = self.sockets
        return uid in s.admin_uids or gid in s.admin_gids

    def look_up_names(self, wanted, given: dict | None = None) -> asyncio.Future:
        """A future done once every item of ``wanted`` (``(kind, address)``,
        ``(NETGROUP, group, host)``) has been looked up in a worker thread
        and cached (one lookup per item however many connections wait for
        it); its result maps each item to its answer, for the decision to
        read under ``NameService.answers`` (a lookup that raised -- a full
        queue's ``LookupShed`` too -- is given as "no name", below, and is
        not cached).  When ``wanted`` carries its request
        (:class:`acl.names.Wanted`), the engine is asked again with the
        answers in, and what it still wants is looked up too, for at most
        ``NAME_ROUNDS`` rounds: a netgroup is asked of the client's name,
        so it shows only once the name is in.

        ``[names] deadline`` seconds after the call the future is done
        whatever is still running: each item not answered by then is given
        as "no name" (``NameService.no_name``: ``unknown``, as libwrap when
        its resolver gives up), so the request is decided at once and is not
        probed again for it; the lookup goes on in its thread and is cached
        when it ends (acl/serve/lookups.py).

        A connection whose request needs another call (its decision, with
        these answers in, wants more: conn.py ``CONN_NAME_ROUNDS``) passes
        what it was given so far (``given``): part of the result, and never
        waited for again -- a name that hangs costs its request one
        deadline, not one per call.  Names first asked in the later call
        get a deadline of their own, as libwrap gives each lookup made one
        after the other its resolver's timeout."""
        loop = asyncio.get_running_loop()
        request = getattr(wanted, "request", None)
        net = lookups.network_of(request.client) if request is not None else None
        got: dict = dict(given) if given else {}
        tried: set = set(got)
        rounds = 0
        out = loop.create_future()
        deadline = self.engine.policy.names.deadline
        if deadline > 0:
            timer = loop.call_later(deadline, lambda: expire())
            out.add_done_callback(lambda _f: timer.cancel())

        def expire() -> None:
            if out.done():
                return
            for item in tried:
                if item not in got:
                    got[item] = NameService.no_name(item[0])
                    self.names_unanswered["deadline"] += 1
            out.set_result(got)

        def start(items) -> None:
            items = [item for item in items if item not in tried]
            if not items:
                out.set_result(got)
                return
            tried.update(items)
            waits = [self._look_up(loop, item, net) for item in items]
            asyncio.gather(*waits, return_exceptions=True).add_done_callback(
                lambda g: finished(items, g))

        def finished(items, g) -> None:
            nonlocal rounds
            if out.done():
                return
            if g.cancelled():
                out.cancel()
                return
            # a failed lookup is "no name" for this request (as when the
            # deadline passes): given, so no probe asks for it again
            for item, r in zip(items, g.result(), strict=True):
                if isinstance(r, BaseException):
                    why = "shed" if isinstance(r, lookups.LookupShed) else "error"
                    self.names_unanswered[why] += 1
                    r = NameService.no_name(item[0])
                got[item] = r
            rounds += 1
            names = self.engine.policy.name_service
            if request is None or names is None or rounds >= NAME_ROUNDS:
                out.set_result(got)
                return
            try:
                with names.answers(got):
                    more = self.engine.name_lookups(request, wanted.now)
            except Exception as exc:      # decided with what is in
                self.log(f"name lookups for {request.client}: {exc!r}")
                more = ()
            start(more)

        start(wanted)
        return out

    def _look_up(self, loop, item, net=None) -> asyncio.Future:
        """``item``'s lookup in a names thread, shared by all who wait for it,
        counted against client network ``net`` (that of the item's address
        when None)."""
        fut = self._name_pending.get(item)
        if fut is None:
            policy = self.engine.policy
            names, cfg = policy.name_service, policy.names
            self._name_executor.resize(cfg.threads)        # a reload may change them
            self.lookup_scheduler.per_network = cfg.per_network
            if net is None:
                net = lookups.network_of(item[1])
            fut = self.lookup_scheduler.run(loop, net, names.lookup, *item)
            self._name_pending[item] = fut
            # registered first, so the answer is cached before any waiter resumes
            fut.add_done_callback(lambda f: self._name_done(names, item, f))
        return fut

    def _name_done(self, names, item, fut) -> None:
        self._name_pending.pop(item, None)
        if not fut.cancelled() and fut.exception() is None:
            names.store(*item, fut.result())
        elif not fut.cancelled() and not isinstance(fut.exception(), lookups.LookupShed):
            self.log(f"name lookup {' '.join(item)}: {fut.exception()}")

    def metrics_body(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def add_front_door(self, door) -> None:
        """Hook for other front doors (NFQUEUE): their metrics join ours."""
        self.front_doors.append(door)
        self.collector.add_front_door(door)

    # -- sockets -------------------------------------------------------
    def bind(self) -> dict[str, str]:
        """Take systemd's sockets or bind our own; returns name -> address.
        On failure nothing we bound is left open or on disk."""
        stored: list[tuple[str, int]] = []
        try:
            addresses = self._bind(stored)
            self._open_store(stored)
            return addresses
        except BaseException:
            for _name, fd in stored:
                try:
                    os.close(fd)
                except OSError:
                    pass
            for sock in self._sockets.values():
                sock.close()
            for path in self._made_paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._sockets.clear()
            self._made_paths.clear()
            self.addresses.clear()
            raise

    def _open_store(self, stored: list[tuple[str, int]]) -> None:
        """The lease store, and the connections it kept to serve again."""
        keep = self._keep_leases = self.engine.policy.run.keep_leases
        try:
            self.lease_store, self._adopted = leasestore.open_store(
                keep, stored, self.engine, self.log)
        except OSError as exc:        # acl still serves, as without the store
            self.log(f"lease store: cannot start it ({exc}): leases are not kept "
                     "across a restart")
            leasestore.discard(stored, self.log, "the store could not start")
        stored.clear()

    def _bind(self, stored: list[tuple[str, int]]) -> dict[str, str]:
        raise_nofile()
        got = systemd.listen_fds(stored=stored)
        s = self.sockets
        wanted = {"query": s.query, "policy": s.policy, "admin": s.admin}
        for name, path in wanted.items():
            if name in got:
                self._sockets[name] = got[name]
                self.addresses[name] = f"fd:{got[name].fileno()} (systemd)"
            elif path:
                # admin: 0666, SO_PEERCRED decides who may talk
                mode = 0o666 if name == "admin" else s.mode
                try:
                    sock = _bind_unix(path, mode)
                except OSError as exc:
                    raise _bind_error(name, path, exc) from None
                self._made_paths.append(path)
                self._sockets[name] = sock
                self.addresses[name] = path
                if name != "admin" and s.group:
                    # the gid acl.policy looked up; lchown: a symlink
                    # swapped in gets the group, not its target
                    os.chown(path, -1, s.gid, follow_symlinks=False)
        listen = self.engine.policy.metrics_listen
        if "metrics" in got:
            self._sockets["metrics"] = got["metrics"]
            self.addresses["metrics"] = f"fd:{got['metrics'].fileno()} (systemd)"
        elif listen:
            try:
                sock = _bind_tcp(listen)
            except OSError as exc:
                raise _bind_error("metrics", listen, exc) from None
            self._sockets["metrics"] = sock
            host, port = sock.getsockname()[:2]
            self.addresses["metrics"] = f"http://{host}:{port}/metrics"
        if "query" not in self._sockets and "policy" not in self._sockets:
            raise AclError("no query or policy socket configured")
        return dict(self.addresses)

    def drop_privileges(self) -> None:
        """``[run]``.  With ``[nfqueue]`` CAP_NET_ADMIN is kept across the user
        change -- the kernel checks it on every verdict, and a verdict it
        refuses leaves the connection hanging -- and checked afterwards: a
        door that could not answer is a fatal start, never a silent one."""
        r = self.engine.policy.run
        if not (r.user or r.group or r.chroot):
            return
        nfqueue = bool(getattr(self.engine.policy, "nfqueue", None))
        keep = (capabilities.CAP_NET_ADMIN,) if nfqueue else ()
        uid, gid = privileges.drop(r.user, r.group, r.chroot, keep=keep)
        self.chroot = r.chroot
        if nfqueue and not capabilities.effective(capabilities.CAP_NET_ADMIN):
            raise AclError(f"[run] user {r.user!r}: CAP_NET_ADMIN is not effective after "
                           "dropping privileges; the NFQUEUE front door could not send "
                           "verdicts (every queued connection would hang)")
        self.log(f"running as uid {uid} gid {gid}" + (f" in {r.chroot}" if r.chroot else "")
                 + (", keeping CAP_NET_ADMIN only" if keep and r.user else ""))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        factories = {
            "query": lambda: conn.BinaryConnection(self),
            "policy": lambda: conn.PostfixConnection(self),
            "admin": lambda: conn.AdminConnection(self),
            "metrics": lambda: conn.MetricsConnection(self),
        }
        # connections systemd kept (leasestore.py) are served before any new one
        adopted, self._adopted = self._adopted, []
        for a in adopted:
            a.sock.setblocking(False)
            try:
                await loop.connect_accepted_socket(
                    lambda a=a: conn.BinaryConnection(self, adopted=a), sock=a.sock)
            except OSError as exc:
                self.log(f"lease store: kept connection {a.number} cannot be served: {exc}")
                for lease in a.leases:
                    self.engine.release(lease)
                self.lease_store.forget(a.number)
                a.sock.close()
        # our own accept loop, on either event loop (acl/serve/accept.py says
        # why): the sockets keep the kernel backlog they were listened with
        for name, sock in self._sockets.items():
            refusal = conn.admin_refusal if name == "admin" else None   # accept.py's rules
            self._servers.append(accept.Acceptor(loop, name, sock, factories[name],
                                                 self.accept_stats, self.log, refusal))

    # -- reload --------------------------------------------------------
    def request_reload(self, why: str) -> None:
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.ensure_future(self._reload(why))

    async def _reload(self, why: str) -> dict:
        loop = asyncio.get_running_loop()
        while True:
            self._again = False
            systemd.notify(systemd.reloading_text())
            t0 = time.perf_counter()
            path = privileges.rebase(str(self.engine.policy.path or ""), self.chroot) or None
            before = self._stat_files()       # what a failed attempt is compared with
            try:
                prepared = await loop.run_in_executor(self._executor, self.engine.prepare, path)
            except Exception as exc:
                systemd.notify("READY=1")
                result = {"ok": False, "error": str(exc)}
                if isinstance(exc, (PolicyError, RuleSyntaxError)):
                    result["cause"] = "policy"       # acl query --admin: bad input, 100
                if isinstance(exc, OutOfResources):
                    # the files were not read, so nothing is known about
                    # them: the watcher compares with the running policy's
                    # stamps again, and tries at its next poll
                    self._log_shortage(why, exc)
                    self._watch_state = self._baseline()
                else:
                    self.log(f"reload ({why}) failed, keeping the running policy: {exc}")
                    self._watch_state = before
            else:
                self._shortage_logged = None
                service = self.policy_service
                keep = self.engine.policy.run.keep_leases
                self.engine.commit(prepared)
                if self.policy_service != service:
                    self.log(f"policy_service is now {self.policy_service!r} (was {service!r})")
                now_keep = self.engine.policy.run.keep_leases
                if now_keep != keep and now_keep != self._keep_leases:
                    self.log(f"[run] keep_leases = {now_keep} takes effect at the next start "
                             f"(running with {self._keep_leases})")
                systemd.notify("READY=1")
                ms = (time.perf_counter() - t0) * 1000
                parts = ", ".join(f"{k[:-2]} {v * 1000:.1f} ms"
                                  for k, v in self.engine.last_prepare.items())
                diagnostics = [str(d) for d in self.engine.policy.diagnostics]
                for d in diagnostics:
                    self.log(d)
                n = len(diagnostics)
                more = f", {n} diagnostic{'s' if n > 1 else ''}" if n else ""
                self.log(f"reloaded ({why}) in {ms:.1f} ms ({parts}{more})")
                result = {"ok": True, "seconds": ms / 1000, **self.engine.last_prepare,
                          "diagnostics": diagnostics}
                self._watch_state = self._baseline()
            if not self._again:
                return result
            why = "again"

    def _log_shortage(self, why: str, exc: Exception) -> None:
        """A reload that ran out of descriptors or memory: logged once, then
        at most every ``accept.LOG_EVERY`` seconds while it lasts (the
        watcher tries again every second)."""
        now = time.monotonic()
        if self._shortage_logged is not None and now - self._shortage_logged < accept.LOG_EVERY:
            return
        self._shortage_logged = now
        self.log(f"reload ({why}) failed, keeping the running policy: {exc}; "
                 + ("trying again at every check of the files" if self.engine.policy.run.watch
                    else "reload again when there is room")
                 + f" (logged at most every {accept.LOG_EVERY:g} s)")

    async def reload_now(self, why: str) -> dict:
        while self._reloading is not None and not self._reloading.done():
            await asyncio.wait([self._reloading])
        self._reloading = asyncio.ensure_future(self._reload(why))
        return await self._reloading

    def _stat_files(self) -> dict:
        """The watched files as they are now."""
        return {p: self.engine.file_stamp(p) for p in
                (privileges.rebase(str(f), self.chroot) for f in self.engine.watched_files())}

    def _baseline(self) -> dict:
        """The running policy's files as they were before it read them."""
        return {privileges.rebase(p, self.chroot): st
                for p, st in self.engine.watched_stamps().items()}

    async def _watch(self, interval: float) -> None:
        self._watch_state = self._baseline()
        while True:
            await asyncio.sleep(interval)
            if not self.engine.policy.run.watch:
                continue
            if self._reloading is not None and not self._reloading.done():
                continue                      # it sets the baseline when it ends
            now = self._stat_files()
            if now != self._watch_state:
                self._watch_state = now
                self.request_reload("file changed")

    # -- admin ---------------------------------------------------------
    async def admin_command(self, line: str) -> dict:
        """One admin line -> its answer.  A line that is no command -- an
        unknown word, or a command with words it does not take -- is
        ``{"ok": false, "cause": "command", ...}``, and a reload refused for
        the policy's sake ``"cause": "policy"`` (docs/protocol.md)."""
        words = line.split()
        cmd = words[0].lower() if words else ""
        if cmd in ADMIN_COMMANDS and len(words) > 1:
            return {"ok": False, "cause": "command",
                    "error": f"{cmd} takes no arguments, got {' '.join(words[1:])!r}"}
        if cmd == "reload":
            return await self.reload_now("admin")
        if cmd == "stats":
            c = self.engine.counters()
            return {
                "ok": True,
                "core": self.build,
                "pure_parts": list(self.pure_parts),
                "decisions": [[s, v, r, n] for (s, v, r), n in sorted(c["decisions"].items())],
                "limit_trips": [[s, lim, n] for (s, lim), n in sorted(c["limit_trips"].items())],
                "reloads": c["reloads"],
                "last_reload": c["last_reload"],
                "last_reload_error": self.engine.last_reload_error,
                "leases": c["leases"],
                "sources_tracked": c["sources_tracked"],
                "clients": self.clients,
                "protocol_errors": [[p, code, n] for (p, code), n
                                    in sorted(self.protocol_errors.items())],
                "accept_errors": [[s, code, n] for (s, code), n
                                  in sorted(self.accept_stats.errors.items())],
                "lease_store": (self.lease_store.stats() if self.lease_store is not None
                                else None),
            }
        if cmd == "dump":
            return {"ok": True, "policy": self.engine.describe()}
        return {"ok": False, "cause": "command",
                "error": f"unknown command {cmd!r} ({', '.join(ADMIN_COMMANDS)})"}

    # -- life cycle ----------------------------------------------------
    async def serve(self, *, watch_interval: float = 1.0, ready=None,
                    pending_reload=None) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        systemd.connect_notify()        # before the chroot can hide its path
        try:
            await self.start()
            self._doors = self._start_doors(loop)
            self.drop_privileges()      # everything is bound: now give up root
        except BaseException:
            # a start that fails after binding (a queue that cannot be bound,
            # a user that cannot be taken) leaves no socket file behind
            self._close_doors()
            await self.close()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
        if pending_reload is not None and pending_reload():   # a SIGHUP while starting
            self.request_reload("SIGHUP during start-up")
        watcher = asyncio.ensure_future(self._watch(watch_interval))
        systemd.notify("READY=1")
        if ready is not None:
            ready()
        try:
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            watcher.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.lease_store is not None:
                await self._hand_over()
            self._close_doors()
            await self.close()

    async def _hand_over(self, bound: float = leasestore.HANDOVER_S) -> None:
        """Stopping with the lease store: each kept connection stops reading,
        answers what it read and flushes it, and is closed -- left in
        systemd's store for the next start; one that cannot be handed over
        whole within ``bound`` seconds leaves the store (leasestore.py)."""
        store = self.lease_store
        store.frozen = True               # no connection joins or leaves the store now
        for srv in self._servers:         # and no new one comes in
            srv.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + bound
        kept = [c for c in self._conns if getattr(c, "kept", 0) and c.transport is not None]
        for c in kept:
            c.stop_reading()
        while any(c.waiting_for_names for c in kept) and loop.time() < end:
            await asyncio.sleep(0.01)      # a name lookup under way: let it answer
        closing = []
        why: collections.Counter[str] = collections.Counter()   # closed: why -> how many
        for c in kept:
            blocked = c.not_handed_over()
            if not blocked:
                c.transport.close()       # after what is buffered is written
                closing.append(c)
            else:
                why[blocked] += 1
                store.forget(c.kept)
                c.transport.abort()
        while any(c in self._conns for c in closing) and loop.time() < end:
            await asyncio.sleep(0.01)
        for c in closing:
            if c in self._conns:          # not flushed within the bound
                why["its client not reading its replies"] += 1
                store.forget(c.kept)
                c.transport.abort()
        n = sum(why.values())
        closed = ", ".join(f"{k} {w}" for w, k in sorted(why.items()))
        self.log(f"lease store: {len(kept) - n} connections handed over to systemd"
                 + (f", {n} closed: {closed}" if n else ""))

    def _start_doors(self, loop) -> list:
        """Front doors other than the sockets: NFQUEUE when ``[nfqueue]`` is set
        (acl/serve/nfqueue.py; it registers its metrics through add_front_door)."""
        if not getattr(self.engine.policy, "nfqueue", None):
            return []
        if self.front_doors:              # the caller started them already
            return []
        from acl.serve.nfqueue import start_for_server

        door = start_for_server(self, loop)
        if door is None:
            return []
        self.log(f"nfqueue on queues {', '.join(map(str, door.config.queues))}")
        return [door]

    def _close_doors(self) -> None:
        for door in getattr(self, "_doors", []):
            try:
                door.close()
            except Exception as exc:          # stopping anyway: say so, go on
                self.log(f"closing a front door: {exc}")
        self._doors = []

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        self._servers.clear()
        for sock in self._sockets.values():
            sock.close()
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)
        self._executor.shutdown(wait=False)
        self._name_executor.shutdown(wait=False, cancel_futures=True)
        # after [run] user the directory is often not ours to write (a
        # descriptor of it kept from before the drop would not help: unlink
        # checks write permission on the directory, however it is reached):
        # say which files stay, the next start replaces them
        left = []
        for path in self._made_paths:
            try:
                os.unlink(privileges.rebase(path, self.chroot))
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"{path} ({exc.strerror})")
        if left:
            self.log(f"socket files not removed: {', '.join(left)}")
