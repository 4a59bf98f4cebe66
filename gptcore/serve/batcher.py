"""Step-level batching: one worker thread owns the engine, and requests that wait together decode together.

An HTTP request becomes one or more rows (engine Requests: one per prompt and choice). Rows wait in a FIFO queue.
Whenever the engine is free, the worker takes up to max_batch of them (waiting up to GATHER_SECONDS for more when
fewer are there, so clients that send at the same moment share a batch) and decodes them with Generator.run: one
batched forward per step for all rows. A row that finishes or is cancelled costs nothing from its next step on;
rows that arrive while a batch decodes wait for the next one.

Admission is decided at once: a submit that would take the rows in the system (waiting or decoding) past
max_batch + max_queue raises QueueFull, which the server answers with 503 rather than letting the client hang.
A cancelled row (its client went away, or timed out) gives its place back at once.

The engine is used from the worker thread only; other threads touch nothing of it but Request.cancelled.
"""

import collections
import logging
import threading
import time

MAX_BATCH = 8  # rows decoded together; more rows per step is more tok/s in total until the device saturates
MAX_QUEUE = 64  # rows waiting beyond a full batch before new requests are refused
GATHER_SECONDS = 0.01  # how long a batch with free rows waits for more to arrive: far below one prefill

log = logging.getLogger("gptcore.serve")


class QueueFull(Exception):
    """The server already holds max_batch + max_queue rows."""


class _Row:
    __slots__ = ("ticket", "index", "request", "done")

    def __init__(self, ticket, index, request):
        self.ticket, self.index, self.request, self.done = ticket, index, request, False


class Ticket:
    """One caller's rows. on_event(index, event) is called from the worker thread with each engine Event of row
    `index` (its finish_reason set on the last), or with an exception if the engine failed."""

    def __init__(self, requests, on_event):
        self.rows = [_Row(self, i, r) for i, r in enumerate(requests)]
        self.on_event = on_event


class Scheduler:
    def __init__(self, engine, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.batch_sizes = collections.Counter()  # rows at the start of a batch -> how many batches had that many
        self._cond = threading.Condition()
        self._waiting = collections.deque()
        self._running = []
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
            for row in [*self._waiting, *self._running]:
                self._free(row)
            self._cond.notify_all()
        self._thread.join()

    def submit(self, requests, on_event) -> Ticket:
        """Queues the requests as rows of one Ticket; raises QueueFull at once if there is no room for all."""
        ticket = Ticket(requests, on_event)
        with self._cond:
            if self._closed or self._in_system + len(requests) > self.capacity:
                raise QueueFull(f"the server holds {self._in_system} of {self.capacity} rows; retry later")
            self._in_system += len(requests)
            self._waiting.extend(ticket.rows)
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket):
        """Drops the ticket's unfinished rows: waiting ones never run, decoding ones stop at the next step."""
        with self._cond:
            for row in ticket.rows:
                self._free(row)
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            waiting = sum(not row.done for row in self._waiting)
            return {"rows": self._in_system, "waiting": waiting, "max_batch": self.max_batch,
                    "max_queue": self.max_queue, "batch_sizes": dict(sorted(self.batch_sizes.items()))}

    def _free(self, row: _Row):
        """Call with the lock held. Marks the row done and gives its place back, once."""
        if not row.done:
            row.done = True
            row.request.cancelled = True  # a no-op for a row the engine already finished
            self._in_system -= 1

    def _next_batch(self) -> list[_Row] | None:
        """Blocks until rows wait; returns up to max_batch of them, or None once closed."""
        with self._cond:
            while True:
                self._waiting = collections.deque(row for row in self._waiting if not row.done)
                if self._closed:
                    return None
                if not self._waiting:
                    self._cond.wait()
                    continue
                end = time.monotonic() + GATHER_SECONDS
                while len(self._waiting) < self.max_batch and not self._closed and time.monotonic() < end:
                    self._cond.wait(end - time.monotonic())
                self._waiting = collections.deque(row for row in self._waiting if not row.done)
                batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                if batch:
                    self.batch_sizes[len(batch)] += 1
                    self._running = batch
                    return batch

    def _work(self):
        while (batch := self._next_batch()) is not None:
            try:
                for events in self.engine.run([row.request for row in batch]):
                    for event in events:
                        row = batch[event.index]
                        if event.finish_reason is not None:
                            with self._cond:
                                self._free(row)
                        row.ticket.on_event(row.index, event)
            except Exception as e:  # the engine failed: every row of the batch hears it, and the server goes on
                log.exception("the engine failed on a batch of %d rows", len(batch))
                for row in batch:
                    with self._cond:
                        failed = not row.done
                        self._free(row)
                    if failed:
                        row.ticket.on_event(row.index, e)
