"""The micro-batcher: batches form under load, results go to the right caller, failures and give-ups are handled."""

import asyncio
import threading
import time

import numpy as np
import pytest

from animetagnet.serve.batching import MicroBatcher, NotRunning, Overloaded


class FakeModel:
    """predict returns each image's first pixel value, and records batch sizes."""

    def __init__(self, delay=0.0, fail=False):
        self.sizes = []
        self.delay = delay
        self.fail = fail
        self.threads = set()

    def __call__(self, batch):
        self.threads.add(threading.get_ident())
        self.sizes.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return batch.reshape(len(batch), -1)[:, :1] * 2.0


def img(v):
    return np.full((2, 2, 3), float(v), dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    model = FakeModel(delay=0.02)

    async def main():
        b = MicroBatcher(model, batch_size=4, max_wait_ms=50)
        await b.start()
        try:
            outs = await asyncio.gather(*(b.submit(img(i)) for i in range(10)))
        finally:
            await b.stop()
        return outs, b.stats

    outs, stats = run(main())
    assert [float(o[0]) for o in outs] == [2.0 * i for i in range(10)]
    assert max(model.sizes) == 4 and sum(model.sizes) == 10
    assert len(model.sizes) < 10  # batched, not one by one
    assert stats.items == 10 and stats.max_batch == 4
    assert len(model.threads) == 1  # one inference thread, never the event loop's


def test_batch_size_one_runs_one_at_a_time():
    model = FakeModel()

    async def main():
        b = MicroBatcher(model, batch_size=1, max_wait_ms=20)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(img(i)) for i in range(5)))
        finally:
            await b.stop()

    outs = run(main())
    assert model.sizes == [1] * 5
    assert [float(o[0]) for o in outs] == [0, 2, 4, 6, 8]


def test_event_loop_stays_free_during_inference():
    model = FakeModel(delay=0.3)

    async def main():
        b = MicroBatcher(model, batch_size=2, max_wait_ms=0)
        await b.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await b.submit(img(1))
        t.cancel()
        await b.stop()
        return ticks

    assert run(main()) >= 5  # the loop kept running while the model worked


def test_abandoned_requests_are_dropped_before_inference():
    model = FakeModel(delay=0.3)

    async def main():
        b = MicroBatcher(model, batch_size=1, max_wait_ms=0)
        await b.start()
        first = asyncio.create_task(b.submit(img(1)))
        await asyncio.sleep(0.05)  # the model is busy with the first one
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit(img(2)), 0.05)
        out = await first
        await asyncio.sleep(0.05)
        await b.stop()
        return out, b.stats

    out, stats = run(main())
    assert float(out[0]) == 2.0
    assert model.sizes == [1]  # the given-up image never reached the model
    assert stats.dropped == 1


def test_inference_error_reaches_every_waiter_and_the_worker_survives():
    model = FakeModel(fail=True)

    async def main():
        b = MicroBatcher(model, batch_size=4, max_wait_ms=20)
        await b.start()
        res = await asyncio.gather(*(b.submit(img(i)) for i in range(3)), return_exceptions=True)
        model.fail = False
        ok = await b.submit(img(5))
        await b.stop()
        return res, ok

    res, ok = run(main())
    assert all(isinstance(r, RuntimeError) for r in res)
    assert float(ok[0]) == 10.0


def test_full_queue_is_overloaded_and_stopped_is_not_running():
    model = FakeModel(delay=0.5)

    async def main():
        b = MicroBatcher(model, batch_size=1, max_wait_ms=0, max_queue=2)
        with pytest.raises(NotRunning):
            await b.submit(img(0))
        await b.start()
        tasks = [asyncio.create_task(b.submit(img(0)))]
        await asyncio.sleep(0.01)
        while b.pending:  # wait until the worker took the first one into the model (0.2 s there)
            await asyncio.sleep(0.005)
        tasks += [asyncio.create_task(b.submit(img(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)  # two queued: the queue is full
        with pytest.raises(Overloaded):
            await b.submit(img(9))
        await asyncio.gather(*tasks)
        await b.stop()
        with pytest.raises(NotRunning):
            await b.submit(img(0))

    run(main())


def test_invalid_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda b: b, batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda b: b, max_wait_ms=-1)
