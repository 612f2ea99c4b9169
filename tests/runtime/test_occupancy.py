"""A lone run gets every core, concurrent runs one thread each (runtime/occupancy.py).

Real sessions of a small onnx.helper model in a real thread pool: which session a run takes is
read in the worker that runs it, while the other calls are held in their workers.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.runtime.occupancy import Occupancy, alone_threads, usable_cores
from services.runtime.options import SessionConfig
from services.runtime.runner import ModelRunner, Run
from services.runtime.session import create_alone_session, create_session
from tests.models import linear_model

X = {"x": np.ones((1, 8), dtype=np.float32)}


def test_alone_threads_only_when_they_add_cores():
    assert alone_threads(4, 1) == 4
    assert alone_threads(0, 1) == (usable_cores() if usable_cores() > 1 else None)
    assert alone_threads(2, 2) is None  # no more threads than the shared session
    assert alone_threads(1, 1) is None  # turned off
    assert alone_threads(8, 0) is None  # the shared session already uses every core


def test_the_alone_session_has_more_threads_and_none_in_deterministic_mode(tmp_path: Path):
    path = linear_model(tmp_path / "m.onnx")
    config = SessionConfig(execution_provider="cpu", intra_op_threads=1, intra_op_threads_alone=3)
    alone = create_alone_session(path, config, "CPUExecutionProvider")
    assert alone is not None
    assert alone.get_session_options().intra_op_num_threads == 3
    assert create_alone_session(path, config, "CUDAExecutionProvider") is None
    fixed = SessionConfig(intra_op_threads=1, intra_op_threads_alone=3, deterministic=True)
    assert create_alone_session(path, fixed, "CPUExecutionProvider") is None
    off = SessionConfig(intra_op_threads=1, intra_op_threads_alone=None)
    assert create_alone_session(path, off, "CPUExecutionProvider") is None


@pytest.fixture
def runner(tmp_path: Path):
    path = linear_model(tmp_path / "m.onnx")
    config = SessionConfig(execution_provider="cpu", intra_op_threads=1, intra_op_threads_alone=2)
    shared = create_session(path, config)[0]
    alone = create_alone_session(path, config, "CPUExecutionProvider")
    with ThreadPoolExecutor(3) as pool:
        yield ModelRunner(shared, pool, alone_session=alone, occupancy=Occupancy())


def _which(runner: ModelRunner, together: threading.Barrier | None = None):
    """A call's work that says which session it ran on; with ``together``, it chooses only
    once every call of the barrier is in a worker (none finished yet)."""

    def work(run: Run) -> str:
        if together is not None:
            together.wait(10)
        chosen = runner.session_now()
        if together is not None:
            together.wait(10)  # no call finishes before every call has chosen
        out = run(X)["y"]
        assert out.shape == (1, 4)
        return "alone" if chosen is runner.alone_session else "shared"

    return work


def test_a_lone_call_takes_the_alone_session_concurrent_calls_the_shared_one(runner):
    assert runner.sessions == 2

    async def scenario() -> tuple[str, list[str], str]:
        lone, _ = await runner.call(_which(runner), 5)
        together = threading.Barrier(3)
        calls = [runner.call(_which(runner, together), 5) for _ in range(3)]
        busy = [name for name, _ in await asyncio.gather(*calls)]
        after, _ = await runner.call(_which(runner), 5)  # the count went back to zero
        return lone, busy, after

    lone, busy, after = asyncio.run(scenario())
    assert lone == "alone"
    assert busy == ["shared"] * 3
    assert after == "alone"


def test_a_call_that_times_out_in_the_queue_leaves_the_count(runner):
    async def scenario() -> str:
        hold = threading.Event()

        def held(run: Run) -> None:
            assert hold.wait(10)

        blockers = [asyncio.ensure_future(runner.call(held, 5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):  # queued behind the three held workers
            await runner.call(_which(runner), 0.05)
        hold.set()
        await asyncio.gather(*blockers)
        await asyncio.sleep(0.05)
        name, _ = await runner.call(_which(runner), 5)
        return name

    assert asyncio.run(scenario()) == "alone"


def test_run_seconds_are_the_session_runs_only(runner):
    def work(run: Run) -> int:
        threading.Event().wait(0.05)  # decoding, say: not part of the run's seconds
        run(X)
        run(X)
        return 2

    done, seconds = asyncio.run(runner.call(work, 5))
    assert done == 2
    assert 0 < seconds < 0.05
