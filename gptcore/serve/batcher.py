"""Continuous batching: one worker thread owns the engine and decodes every running row in one step.

An HTTP request becomes one or more rows (engine Requests: one per prompt and choice). Rows wait in a FIFO queue.
The worker drives an engine Batch of max_batch cache rows: before each step it moves waiting rows into the free
ones, so a request that arrives while others decode joins them at the next step (its prompt is prefilled in that
step) instead of waiting for them to finish. A row that finishes frees its place and its cache row at once; a
cancelled one frees its place at once and its cache row at the next step. When no row runs and none waits, the
worker closes the Batch (the cache goes back to the engine) and sleeps until the next request; the next Batch reads
the engine's weights afresh.

Admission is decided at once: a submit that would take the rows in the system (waiting or decoding) past
max_batch + max_queue raises QueueFull, which the server answers with 503 rather than letting the client hang.
A cancelled row (its client went away, or timed out) gives its place back at once.

The engine is used from the worker thread only; other threads touch nothing of it but Request.cancelled.
"""

import collections
import logging
import os
import threading

from ..errors import GPTCoreError

MAX_BATCH = 8  # rows decoded together; more rows per step is more tok/s in total until the device saturates
MAX_QUEUE = 64  # rows waiting beyond a full batch before new requests are refused


def default_threads() -> int:
    """Torch threads for the engine: every core this process may run on but one, which is left to the HTTP side
    (the event loop's JSON and socket writes, per token and per client). On two cores, a second torch thread made
    the streamed tok/s worse, not better (bench_serve, 4 clients: 473-475 tok/s with 2 threads, 520-750 with 1): it
    took the core the event loop needed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)

log = logging.getLogger("gptcore.serve")


class QueueFull(Exception):
    """The server already holds max_batch + max_queue rows."""


class _Row:
    __slots__ = ("ticket", "index", "request", "done")

    def __init__(self, ticket, index, request):
        self.ticket, self.index, self.request, self.done = ticket, index, request, False


class Ticket:
    """One caller's rows. on_events([(index, event), ...]) is called from the worker thread once per step with
    the engine Events of the ticket's rows (each row's last has finish_reason set), or with an exception in
    place of the event if the engine failed."""

    def __init__(self, requests, on_events):
        self.rows = [_Row(self, i, r) for i, r in enumerate(requests)]
        self.on_events = on_events


class Scheduler:
    def __init__(self, engine, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.step_rows = collections.Counter()  # rows decoded in a step -> how many steps decoded that many
        self._cond = threading.Condition()
        self._waiting = collections.deque()
        self._running = {}  # the engine batch's handle -> the row it decodes
        self._in_system = 0  # rows admitted and neither finished nor cancelled
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="gptcore-engine", daemon=True)

    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    def start(self):
        self._thread.start()

    def close(self):
        """Cancels every row and stops the worker after its current step."""
        with self._cond:
            self._closed = True
            for row in [*self._waiting, *self._running.values()]:
                self._free(row)
            self._cond.notify_all()
        self._thread.join()

    def submit(self, requests, on_events) -> Ticket:
        """Queues the requests as rows of one Ticket; raises QueueFull at once if there is no room for all."""
        ticket = Ticket(requests, on_events)
        with self._cond:
            if self._closed or self._in_system + len(requests) > self.capacity:
                raise QueueFull(f"the server holds {self._in_system} of {self.capacity} rows; retry later")
            self._in_system += len(requests)
            self._waiting.extend(ticket.rows)
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket):
        """Drops the ticket's unfinished rows: waiting ones never run, decoding ones leave at the next step."""
        with self._cond:
            for row in ticket.rows:
                self._free(row)

    def stats(self) -> dict:
        with self._cond:
            waiting = sum(not row.done for row in self._waiting)
            return {"rows": self._in_system, "waiting": waiting, "max_batch": self.max_batch,
                    "max_queue": self.max_queue, "step_rows": dict(sorted(self.step_rows.items()))}

    def _free(self, row: _Row):
        """Call with the lock held. Marks the row done and gives its place back, once."""
        if not row.done:
            row.done = True
            row.request.cancelled = True  # a no-op for a row the engine already finished
            self._in_system -= 1

    def _wait_for_rows(self) -> bool:
        """Blocks until a row waits (True) or the scheduler closes (False)."""
        with self._cond:
            while not self._closed and not any(not row.done for row in self._waiting):
                self._cond.wait()
            return not self._closed

    def _admit(self, batch) -> list:
        """Moves waiting rows into the batch's free rows. Returns [(ticket, [(index, error), ...])] for the rows
        the engine refused."""
        refused = collections.defaultdict(list)
        with self._cond:
            while self._waiting and batch.free and not self._closed:
                row = self._waiting.popleft()
                if row.done:  # cancelled while it waited
                    continue
                try:
                    self._running[batch.add(row.request)] = row
                except GPTCoreError as e:  # the app checks requests first; this is a bug's safety net
                    log.error("the engine refused a row: %s", e)
                    refused[row.ticket].append((row.index, e))
                    self._free(row)
        return refused.items()

    def _work(self):
        while self._wait_for_rows():
            try:
                with self.engine.batch(self.max_batch) as batch:
                    while True:
                        self._deliver(self._admit(batch))
                        if not batch:  # nothing runs, nothing waits: close the batch until the next request
                            break
                        events = batch.step()
                        by_ticket = collections.defaultdict(list)
                        with self._cond:
                            for event in events:
                                row = self._running[event.index]
                                if event.finish_reason is not None:
                                    del self._running[event.index]
                                    self._free(row)
                                by_ticket[row.ticket].append((row.index, event))
                            decoded = sum(e.token is not None for e in events)
                            if decoded:
                                self.step_rows[decoded] += 1
                        self._deliver(by_ticket.items())
            except Exception as e:  # the engine failed: every running row hears it, and the server goes on
                log.exception("the engine failed on a step of %d rows", len(self._running))
                failed = collections.defaultdict(list)
                with self._cond:
                    for row in self._running.values():
                        if not row.done:
                            failed[row.ticket].append((row.index, e))
                        self._free(row)
                    self._running = {}
                self._deliver(failed.items())

    @staticmethod
    def _deliver(deliveries):
        for ticket, items in deliveries:
            ticket.on_events(items)
