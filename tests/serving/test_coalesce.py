"""The API process's request coalescer (bentoservice.coalesce), with a scripted model call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bentoservice.coalesce import Coalescer


class ScriptedModel:
    """Answers each row with its own first pixel value; calls finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None
        self.unavailable = False

    async def __call__(self, pixels: np.ndarray) -> np.ndarray | None:
        self.calls.append(len(pixels))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return None if self.unavailable else pixels[:, 0, 0, :1].astype(np.float32)


def _pictures(*values: int) -> np.ndarray:
    return np.stack([np.full((4, 4, 3), v, np.uint8) for v in values])


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_idle_requests_go_straight_through_and_busy_ones_are_joined() -> None:
    async def scenario() -> None:
        model = ScriptedModel()
        coalescer = Coalescer(model, max_images=4, max_in_flight=1)
        first = asyncio.ensure_future(coalescer.infer(_pictures(1)))
        await _settle()
        assert model.calls == [1]  # nothing waited for company
        later = [asyncio.ensure_future(coalescer.infer(_pictures(v, v))) for v in (2, 3, 4)]
        await _settle()
        assert model.calls == [1]  # the slot is busy: they wait
        model.release.set()
        answers = [await first] + [await f for f in later]
        assert model.calls == [1, 4, 2]  # 2+2 pictures joined, the third pair would exceed 4
        assert [a[:, 0].tolist() for a in answers] == [[1], [2, 2], [3, 3], [4, 4]]
        assert coalescer.in_flight == 0

    asyncio.run(scenario())


def test_a_batch_larger_than_the_limit_goes_alone() -> None:
    async def scenario() -> None:
        model = ScriptedModel()
        model.release.set()
        answer = await Coalescer(model, max_images=2).infer(_pictures(7, 8, 9))
        assert model.calls == [3] and answer[:, 0].tolist() == [7, 8, 9]

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["unavailable", "error"])
def test_every_request_of_a_failed_call_hears_about_it(outcome: str) -> None:
    async def scenario() -> None:
        model = ScriptedModel()
        coalescer = Coalescer(model, max_images=8, max_in_flight=1)
        blocker = asyncio.ensure_future(coalescer.infer(_pictures(1)))
        waiting = [asyncio.ensure_future(coalescer.infer(_pictures(v))) for v in (2, 3)]
        await _settle()
        if outcome == "error":
            model.fail = RuntimeError("model exploded")
        else:
            model.unavailable = True
        model.release.set()
        results = await asyncio.gather(blocker, *waiting, return_exceptions=True)
        if outcome == "error":
            assert all(isinstance(r, RuntimeError) for r in results)
        else:
            assert results == [None, None, None]
        assert coalescer.in_flight == 0 and not coalescer.waiting

    asyncio.run(scenario())


def test_a_cancelled_request_does_not_disturb_the_others_in_its_call() -> None:
    async def scenario() -> None:
        model = ScriptedModel()
        coalescer = Coalescer(model, max_images=8, max_in_flight=1)
        blocker = asyncio.ensure_future(coalescer.infer(_pictures(1)))
        kept_first = asyncio.ensure_future(coalescer.infer(_pictures(4)))
        gone = asyncio.ensure_future(coalescer.infer(_pictures(2)))
        kept = asyncio.ensure_future(coalescer.infer(_pictures(3)))
        await _settle()
        gone.cancel()  # its client disconnected
        model.release.set()
        assert (await kept)[:, 0].tolist() == [3] and (await kept_first)[:, 0].tolist() == [4]
        await blocker
        assert gone.cancelled() and model.calls == [1, 2]  # the cancelled picture was not sent

    asyncio.run(scenario())
