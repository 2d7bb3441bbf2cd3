"""A request queue in front of one Predictor: concurrent requests that share
their sampling knobs run as one fixed-shape batch (a power-of-two row count
up to the Predictor's batch_size, its sequence/patch buckets, a power-of-two
decode length),
so the compiled prefill and decode programs are reused and the device sees
batches, not one request at a time.

A batch decodes `chunk` tokens per call (`generate_chunks`). After each
chunk every request sees its ids so far (`Job.watch`, which streams them);
one that is done (stop id, its max_tokens, or `watch` says so: a stop
string) gets its result at once, and the batch ends when all are done.

One worker thread owns the model. It waits up to `wait_s` after the first
queued request for others to join its batch (no wait once the batch is
full); requests with other knobs wait for a later batch, oldest first.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from tempura_jax.data.sample import Example
from tempura_jax.inference.generate import SamplingConfig
from tempura_jax.inference.infer import Predictor

log = logging.getLogger(__name__)


def row_bucket(n: int, limit: int) -> int:
    """The rows a batch of n requests runs with: a power of two up to `limit`
    (the Predictor's batch_size), so a lone request does not pay for a full batch."""
    return min(limit, 1 << (max(n, 1) - 1).bit_length())


def decode_bucket(n: int, limit: int) -> int:
    """The decode length a batch runs for: n rounded up to a power of two (at
    least 16, at most `limit`), so a few programs serve every max_tokens."""
    return min(limit, max(16, 1 << (max(n, 1) - 1).bit_length()))


@dataclasses.dataclass
class Job:
    example: Example
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    # Called from the worker with the ids so far after each chunk; True: no more needed.
    watch: Callable[[list[int]], bool] | None = None
    future: Future = dataclasses.field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Rows of one batch share these (generate takes one SamplingConfig)."""
        return ("greedy",) if self.temperature == 0 else (self.temperature, self.top_p, self.seed)


@dataclasses.dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    rows: int = 0  # requests run, summed over batches
    largest_batch: int = 0


class Batcher:
    def __init__(
        self, predictor: Predictor, max_new_tokens: int, wait_s: float = 0.02, chunk: int = 8
    ):
        if chunk < 1:
            raise ValueError(f"the decode chunk must be at least 1 token, got {chunk}")
        self.predictor, self.max_new_tokens, self.wait_s = predictor, max_new_tokens, wait_s
        self.chunk = chunk
        self.stats = Stats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tempura-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._lock:
            self.stats.requests += 1
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _collect(self, pending: list[Job]) -> tuple[list[Job], bool]:
        """(this batch, stop): the oldest job's batch-mates, waiting up to wait_s."""
        size, stop = self.predictor.batch_size, False
        deadline = time.monotonic() + self.wait_s
        key = pending[0].key
        while sum(j.key == key for j in pending) < size:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            pending.append(job)
        batch = [j for j in pending if j.key == key][:size]
        pending[:] = [j for j in pending if all(j is not b for b in batch)]
        return batch, stop

    def _loop(self) -> None:
        pending: list[Job] = []
        stop = False
        while not (stop and not pending):
            if not pending:
                job = self._queue.get()
                if job is None:
                    break
                pending.append(job)
            batch, stopping = self._collect(pending)
            stop = stop or stopping
            self._run(batch)
        for job in pending:
            job.future.set_exception(RuntimeError("the server is shutting down"))

    def _run(self, batch: list[Job]) -> None:
        first = batch[0]
        base: SamplingConfig = self.predictor.sampling
        steps = decode_bucket(max(j.max_tokens for j in batch), self.max_new_tokens)
        sampling = dataclasses.replace(
            base,
            max_new_tokens=steps,
            temperature=first.temperature,
            top_p=first.top_p,
            seed=first.seed,
        )
        rows = row_bucket(len(batch), self.predictor.batch_size)
        live = dict(enumerate(batch))  # the jobs still decoding
        try:
            examples = [j.example for j in batch]
            chunks = self.predictor.generate_chunks(examples, sampling, rows, self.chunk)
            for gen in chunks:
                for i, job in list(live.items()):
                    n = min(int(gen.lengths[i]), job.max_tokens)
                    row = gen.tokens[i, :n].tolist()
                    ended = bool(gen.done[i]) or n == job.max_tokens
                    if self._watch(job, row) or ended:
                        if not job.future.done():  # (a failed watch failed it)
                            job.future.set_result((row, len(batch)))
                        del live[i]
                if not live:
                    chunks.close()  # no decoding for rows nobody waits for
                    break
        except Exception as e:  # noqa: BLE001 - the requests fail, the server stays up
            log.exception("batch of %d failed", len(batch))
            for job in live.values():
                job.future.set_exception(e)
            return
        with self._lock:
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    @staticmethod
    def _watch(job: Job, row: list[int]) -> bool:
        """The job's verdict on its ids so far; a failing watch fails that job only."""
        if job.watch is None:
            return False
        try:
            return bool(job.watch(row))
        except Exception as e:  # noqa: BLE001
            log.exception("a request's watch failed")
            job.future.set_exception(e)
            return True
