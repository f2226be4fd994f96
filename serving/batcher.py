"""Dynamic batching: concurrent requests for the device model are run together, not one at a time.

    batcher = Batcher(policy.draft_many, max_batch=32, wait_ms=10)
    draft = await asyncio.wrap_future(batcher.submit(request))   # from any thread or event loop
    batcher.close()

One worker thread owns the device model.  It takes the first waiting item, then keeps collecting until ``max_batch``
items are in or ``wait_ms`` has passed since that first item, and runs them as one call of ``fn(items) ->
results`` (``CollaborativePolicy.draft_many``: one batched ``HFGenerator.extend`` per round).  Requests that arrive
while a batch runs wait for the next one, so under load the batches fill up by themselves and the wait window only
matters when the server is quiet.  When ``fn`` raises for a batch, its two halves are run again apart, and so on
down to single items: only an item that fails alone gets the exception (the server answers it with a 500), its
batch-mates get their results, and the worker lives on.  A batch with one bad item of n costs about 2·log2(n) extra
calls.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

log = logging.getLogger(__name__)


class Batcher:
    """See the module docstring.  ``on_batch(size)``: called after each batch (the metrics count batch sizes)."""

    def __init__(self, fn, max_batch: int = 32, wait_ms: float = 10.0, on_batch=None):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch={max_batch!r}: give at least 1 (e.g. --max-batch 32)")
        if not wait_ms >= 0:
            raise ValueError(f"wait_ms={wait_ms!r}: give a number of milliseconds >= 0 (e.g. --batch-wait-ms 10)")
        self.fn, self.max_batch, self.wait_s, self.on_batch = fn, int(max_batch), wait_ms / 1000.0, on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="device-batcher", daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        """Queue ``item``; the future gets its result (or the batch's exception)."""
        if self._closed.is_set():
            raise RuntimeError("the batcher is closed")
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def _collect(self) -> list:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # close after this batch
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while not self._closed.is_set():
            batch = self._collect()
            if not batch:
                break
            batch = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not batch:
                continue
            self._run(batch)

    def _run(self, batch: list) -> None:
        """``fn`` over ``batch``; on an exception, each half again apart (see the module docstring)."""
        try:
            results = self.fn([item for item, _ in batch])
        except Exception as e:  # noqa: BLE001 -- isolated by bisection, then handed to the item that fails alone
            if len(batch) == 1:
                log.exception("a device request failed on its own")
                batch[0][1].set_exception(e)
                return
            log.warning(
                "a device batch of %d failed (%s: %s); running its halves apart to find the request that fails",
                len(batch),
                type(e).__name__,
                e,
            )
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        except BaseException as e:  # noqa: BLE001 -- KeyboardInterrupt and the like: every waiting request gets it
            for _, fut in batch:
                fut.set_exception(e)
            raise
        for (_, fut), res in zip(batch, results):
            fut.set_result(res)
        if self.on_batch is not None:
            self.on_batch(len(batch))

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued items, then stop the worker."""
        if not self._closed.is_set():
            self._queue.put(None)
            self._thread.join(timeout)
            self._closed.set()
