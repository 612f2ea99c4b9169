"""A model's memory measured before the server builds its session: a trial in a child process.

A model file of a few hundred bytes can make ONNX Runtime allocate gigabytes while the session
is built (constant folding a ``ConstantOfShape``) or warmed up. :class:`SessionProbe` builds
and warms up the session first in a child process (``python -m
services.runtime.probe_child``: a fresh interpreter, given the path of the verified file,
never a pickled object) whose address space is capped at its baseline plus the budget
(``RLIMIT_AS``). A model that needs more fails there (``SessionTooLarge``), and the server's
own memory never sees it; one that fits reports its peak and resident growth
(:class:`Footprint`), which the session cache counts. Results are remembered by the file's
SHA-256, so a known model is measured once per process.

Blocking (it waits for the child): call it from the load executor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from services.runtime.errors import ProbeFailed, SessionTooLarge, WarmupTimeout
from services.runtime.probe_child import PREFIX

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a session took: the peak growth while it was built and warmed up, and what stayed."""

    peak_bytes: int
    resident_bytes: int


class SessionProbe:
    """Trial builds under ``budget_bytes`` (see the module docstring)."""

    def __init__(
        self,
        budget_bytes: int,
        *,
        warmup_timeout_s: float,
        build_timeout_s: float,
        intra_op_threads: int = 1,
        remember: int = 4096,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.warmup_timeout_s = warmup_timeout_s
        self.build_timeout_s = build_timeout_s
        self.intra_op_threads = max(intra_op_threads, 1)
        self._remember = remember
        self._known: OrderedDict[str, Footprint | str] = OrderedDict()
        self._lock = threading.Lock()
        self.trials = 0

    def measure(
        self, path: Path, sha256: str, shapes: dict[str, list[int]] | None = None
    ) -> Footprint:
        """The footprint of the model at ``path``; raises :class:`SessionTooLarge` when it
        needs more than the budget, :class:`WarmupTimeout` when its warm-up passes the deadline,
        :class:`ProbeFailed` when it cannot be built."""
        shapes_json = json.dumps(shapes or {}, sort_keys=True)
        key = f"{sha256}:{shapes_json}"
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
        if isinstance(known, Footprint):
            return known
        if isinstance(known, str):
            raise SessionTooLarge(known)
        try:
            footprint = self._trial(path, shapes_json)
        except SessionTooLarge as exc:
            self._keep(key, str(exc))
            raise
        self._keep(key, footprint)
        return footprint

    def _keep(self, key: str, value: Footprint | str) -> None:
        with self._lock:
            self._known[key] = value
            while len(self._known) > self._remember:
                self._known.popitem(last=False)

    def _trial(self, path: Path, shapes_json: str) -> Footprint:
        self.trials += 1
        budget = self.budget_bytes
        timeout_s = self.build_timeout_s + self.warmup_timeout_s
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
        argv = [
            sys.executable,
            "-m",
            "services.runtime.probe_child",
            str(path),
            str(budget),
            str(max(int(self.warmup_timeout_s * 1000), 1)),
            shapes_json,
            str(self.intra_op_threads),
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=timeout_s,
                env=env,
                cwd=str(_ROOT),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProbeFailed(
                f"building the session took longer than {timeout_s:.0f} s "
                "(CIDSERVE_SESSION_BUILD_TIMEOUT_S)"
            ) from None
        report = _report(done.stdout)
        if report is None:
            if done.returncode < 0:
                name = signal.Signals(-done.returncode).name
                raise SessionTooLarge(
                    f"the trial build was killed ({name}) under the memory budget of "
                    f"{budget} bytes (CIDSERVE_MAX_SESSION_BYTES)"
                )
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise ProbeFailed(f"the trial build failed: {' '.join(tail) or done.returncode}")
        if report.get("ok"):
            return Footprint(int(report["peak_bytes"]), int(report["resident_bytes"]))
        reason, message = report.get("reason"), str(report.get("message", ""))
        if reason == "memory":
            raise SessionTooLarge(
                f"building and warming up its session needs more than the budget of {budget} "
                f"bytes (CIDSERVE_MAX_SESSION_BYTES): {message[:300]}"
            )
        if reason == "timeout":
            raise WarmupTimeout(message)
        raise ProbeFailed(message)


def _report(stdout: bytes) -> dict[str, object] | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(PREFIX):
            try:
                value = json.loads(line[len(PREFIX) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
