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
* ``submit`` starts a thread per call until there are ``threads``; futures
  not started at ``shutdown(cancel_futures=True)`` are cancelled.
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

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((fut, fn, args, kwargs))
            if len(self._threads) < self._max:
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
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:       # the future carries it to the caller
                fut.set_exception(exc)
            else:
                fut.set_result(result)

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
