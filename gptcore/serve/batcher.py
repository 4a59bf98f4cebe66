"""Step-level batching: one worker thread owns the engine, and requests that wait together decode together.

An HTTP request becomes one or more rows (engine Requests: one per prompt and choice). Rows wait in a FIFO queue.
Whenever the engine is free, the worker takes up to max_batch of them and decodes them with Generator.run: one
batched forward per step for all rows. A row that finishes or is cancelled costs nothing from its next step on;
rows that arrive while a batch decodes wait for the next one (Generator.run takes its rows at the start).

Gathering. Clients served together tend to come back together, a few milliseconds apart. So when a batch ends,
the next one waits up to GATHER_SECONDS until as many rows wait as the ended batch had plus those already waiting
(at most max_batch). Without that, 4 clients settle into two alternating batches of 2, each half waiting out the
other's whole generation; with it they share one batch of 4. A lone client never waits: its previous batch was
its own single row.

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
GATHER_SECONDS = 0.05  # the longest a batch waits for the previous batch's clients to come back

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

    def _live_waiting(self) -> int:
        """Call with the lock held: drops cancelled rows from the queue, returns how many remain."""
        self._waiting = collections.deque(row for row in self._waiting if not row.done)
        return len(self._waiting)

    def _next_batch(self, expected: int) -> list[_Row] | None:
        """Blocks until rows wait; returns up to max_batch of them, or None once closed. `expected`: how many rows
        the previous batch had."""
        with self._cond:
            # the rows already waiting, plus the previous batch's, whose clients may be about to send their next
            want = min(self.max_batch, expected + self._live_waiting())
            while not self._closed:
                if not self._live_waiting():
                    self._cond.wait()
                    continue
                end = time.monotonic() + GATHER_SECONDS
                while self._live_waiting() < want and not self._closed and time.monotonic() < end:
                    self._cond.wait(end - time.monotonic())
                batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                if batch:
                    self.batch_sizes[len(batch)] += 1
                    self._running = batch
                    return batch
            return None

    def _work(self):
        previous = 1
        while (batch := self._next_batch(previous)) is not None:
            previous = len(batch)
            try:
                for events in self.engine.run([row.request for row in batch]):
                    by_ticket = collections.defaultdict(list)
                    with self._cond:
                        for event in events:
                            row = batch[event.index]
                            if event.finish_reason is not None:
                                self._free(row)
                            by_ticket[row.ticket].append((row.index, event))
                    for ticket, ticket_events in by_ticket.items():
                        ticket.on_events(ticket_events)
            except Exception as e:  # the engine failed: every row of the batch hears it, and the server goes on
                log.exception("the engine failed on a batch of %d rows", len(batch))
                failed = collections.defaultdict(list)
                with self._cond:
                    for row in batch:
                        if not row.done:
                            failed[row.ticket].append((row.index, e))
                        self._free(row)
                for ticket, ticket_events in failed.items():
                    ticket.on_events(ticket_events)
