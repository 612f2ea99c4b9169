"""The child side of a trial build (``python -m services.runtime.probe_child``).

Run by :mod:`services.runtime.probe` with the path of a verified model file, a memory budget,
the warm-up deadline and the warm-up shapes. After its imports it caps its own address space
at what it uses now plus the budget (``RLIMIT_AS``), builds the session (graph optimizations
on, so constant folding happens here), makes the warm-up run, and prints one line
``cidserve-probe {json}``: ``{"ok": true, "peak_bytes": ..., "resident_bytes": ...}`` (growth
over the baseline after imports; with ``warmup_error`` when the zero-input warm-up run was
refused by the model for a reason other than memory or time) or ``{"ok": false, "reason":
"memory" | "timeout" | "invalid", "message": ...}``. It never unpickles anything: its inputs
are a path and numbers.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

import onnxruntime as ort

from services.runtime.errors import WarmupTimeout
from services.runtime.memory import rss_bytes, vm_bytes
from services.runtime.warmup import warm_up, warmup_feeds

PREFIX = "cidserve-probe "

_MEMORY_WORDS = ("bad_alloc", "failed to allocate", "cannot allocate memory", "out of memory")


def _is_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(word in text for word in _MEMORY_WORDS)


def trial(
    path: str, budget: int, warmup_s: float, shapes: dict[str, list[int]], threads: int
) -> dict[str, Any]:
    """Build and warm up the model under the budget; the report printed by :func:`main`."""
    baseline = rss_bytes()
    limit = vm_bytes() + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 4
    warmup_error = None
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except BaseException as exc:  # onnxruntime raises its own types
        reason = "memory" if _is_memory(exc) else "invalid"
        return {"ok": False, "reason": reason, "message": str(exc)[:2000]}
    try:
        warm_up(session, warmup_feeds(session, shapes), warmup_s)
    except WarmupTimeout as exc:
        return {"ok": False, "reason": "timeout", "message": str(exc)}
    except BaseException as exc:
        if _is_memory(exc):
            return {"ok": False, "reason": "memory", "message": str(exc)[:2000]}
        # Zero inputs the model cannot take (a string it parses as a number, say): the build
        # is measured; a load that asks for a warm-up fails in the server's own warm-up.
        warmup_error = str(exc)[:500]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    resident = rss_bytes() - baseline
    if peak > budget:
        return {"ok": False, "reason": "memory", "message": f"peak growth {peak} bytes"}
    report: dict[str, Any] = {
        "ok": True,
        "peak_bytes": max(peak, 0),
        "resident_bytes": max(resident, 0),
    }
    if warmup_error is not None:
        report["warmup_error"] = warmup_error
    return report


def main(argv: list[str]) -> int:
    path, budget, warmup_ms, shapes, threads = argv
    report = trial(path, int(budget), int(warmup_ms) / 1000, json.loads(shapes), int(threads))
    sys.stdout.write(PREFIX + json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
