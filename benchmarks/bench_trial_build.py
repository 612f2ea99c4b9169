"""What the trial build (the session memory budget) costs a cold load.

A model's first load in a process builds and warms up its session once in a child process
under ``CIDSERVE_MAX_SESSION_BYTES`` (services/runtime/probe.py) before the server builds its
own. This measures, in one run, interleaved, ``ModelRepository.load`` of the same published
model on a fresh instance each time (empty session cache, nothing remembered of the model)
with the trial build on and off, and what the session cache counts for the model each way
(the measured bytes with it, about the file size and the process' growth without).

Run from the repository root::

    .venv/bin/python benchmarks/bench_trial_build.py                          # a small model
    .venv/bin/python benchmarks/bench_trial_build.py --model data/models/efficientnet-lite0.onnx

(``make run`` exports EfficientNet-Lite0 to ``data/models/``.) Prints a markdown table of
median / min / max cold-load milliseconds and the measured bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from registry.local_store import LocalContentStore  # noqa: E402
from registry.publish import publish_model  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.wiring import build_services  # noqa: E402
from tests.models import linear_model  # noqa: E402


async def cold_load(
    store: LocalContentStore, data: Path, cid: str, probe: bool
) -> tuple[float, int]:
    """One load on a fresh instance: (milliseconds, bytes the session cache counts)."""
    settings = Settings(data_dir=data, session_probe=probe, optimized_model_cache=False)
    services = build_services(settings, store=store)
    try:
        outcome = await services.repository.load(cid, warmup=True)
        counted = int(services.repository.cache_status()["total_bytes"])
        return outcome.load_time_ms, counted
    finally:
        await services.aclose()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-trial-") as tmp:
        work = Path(tmp)
        store = LocalContentStore(work / "store")
        model = Path(args.model) if args.model else linear_model(work / "linear.onnx", seed=1)
        cid = (await publish_model(store, model, name=model.stem)).metadata_cid
        samples: dict[bool, list[float]] = {True: [], False: []}
        counted: dict[bool, int] = {}
        for rep in range(args.reps + 1):
            for probe in (True, False) if rep % 2 else (False, True):
                ms, size = await cold_load(store, work / f"data-{rep}-{probe}", cid, probe)
                if rep:  # the first round warms the page cache and the imports
                    samples[probe].append(ms)
                    counted[probe] = size
        print(f"model {model.name} ({model.stat().st_size} bytes), {args.reps} cold loads each\n")
        print("| trial build | median ms | min ms | max ms | bytes counted in the cache |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for probe in (False, True):
            s = samples[probe]
            print(
                f"| {'on' if probe else 'off'} | {statistics.median(s):.0f} | {min(s):.0f} | "
                f"{max(s):.0f} | {counted[probe]} |"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an ONNX file (default: a small linear model)")
    parser.add_argument("--reps", type=int, default=5, help="cold loads per setting")
    asyncio.run(main(parser.parse_args()))
