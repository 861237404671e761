"""Worker threads that never hold the process up when it stops.

Rules of this file:

* Name lookups (a DNS server that does not answer) and reload compiles (a
  large xinetd.conf) run in these threads.  Neither writes anything: when
  ``acl serve`` stops, what they were doing can be dropped.
* ``concurrent.futures.ThreadPoolExecutor`` joins its threads at
  interpreter exit (its exit hook), so a stop waited for the slowest lookup
  or compile -- after the sockets were gone and ``stopped`` was logged.
  These threads are daemon threads: the interpreter exits normally (logs
  flushed, exit handlers run, exit status kept) and abandons them.  That is
  chosen over ``os._exit`` after the close, which would skip every other
  exit handler and buffered output.
* ``submit`` starts a thread only when no thread is idle (every one is
  running a task, or fewer are idle than tasks wait), until there are
  ``threads``; ``threads`` may be raised or lowered later (``resize``: the
  name pool follows ``[names] threads`` across reloads; threads already
  started stay).  Futures not started at ``shutdown(cancel_futures=True)``
  are cancelled.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading


class DaemonPool(concurrent.futures.Executor):
    def __init__(self, threads: int, name: str) -> None:
        self._max = threads
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shutdown = False
        self._busy = 0                  # threads running a task (under _lock)
        self._waiting = 0               # tasks queued, not yet taken (under _lock)

    def resize(self, threads: int) -> None:
        with self._lock:
            self._max = threads

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((fut, fn, args, kwargs))
            self._waiting += 1
            idle = len(self._threads) - self._busy
            if self._waiting > idle and len(self._threads) < self._max:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self._name}_{len(self._threads)}")
                t.start()
                self._threads.append(t)
            return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:
                self._waiting -= 1
                self._busy += 1
            try:
                fut, fn, args, kwargs = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:       # the future carries it to the caller
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            finally:
                with self._lock:
                    self._busy -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()
