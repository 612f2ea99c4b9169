"""Progress bars: drawn on a terminal (a real pseudo-terminal here), never in a pipe or a log.

``cidserve publish`` and ``cidserve export`` run as real processes with stderr on a pty or on a
pipe; the IPFS add bars are drawn by the factory ``publish`` hands to the IPFS store.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli.progress import MIN_BYTES, byte_bars, steps
from tests.models import linear_model

CIDSERVE = [sys.executable, "-m", "services.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _read_all(fd: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> str:
    """Everything written to the pty's other end until the process exits (or, without one,
    until nothing more comes)."""
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end is closed
                break
            if not chunk:
                break
            out += chunk
        elif proc is None or proc.poll() is not None:
            break
    return ANSI.sub("", out.decode("utf-8", "replace"))


def _run_on_a_tty(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str, str]:
    """Run a command with stderr on a pseudo-terminal; return (status, stdout, stderr)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        err = _read_all(master, proc, timeout_s)
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), err


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDSERVE_")}
    env.update({"CIDSERVE_DATA_DIR": str(tmp_path / "data"), "CIDSERVE_LOG_FORMAT": "text"})
    env["COLUMNS"] = "120"
    return env


def test_publish_shows_its_steps_on_a_terminal(tmp_path: Path) -> None:
    model = linear_model(tmp_path / "tty.onnx", seed=3)
    status, out, err = _run_on_a_tty(
        [*CIDSERVE, "publish", str(model), "--name", "tty"], _env(tmp_path), 120
    )
    assert status == 0, err
    assert out.strip().startswith("baf")  # the metadata CID, alone on stdout
    assert "publish" in err and "4/4" in err and "done" in err


def test_publish_is_quiet_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    model = linear_model(tmp_path / "pipe.onnx", seed=4)
    proc = subprocess.run(
        [*CIDSERVE, "publish", str(model), "--name", "pipe"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("baf")
    assert proc.stderr == ""


@pytest.mark.slow
def test_export_shows_its_steps_on_a_terminal_and_nothing_in_a_pipe(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out_tty = tmp_path / "tty.onnx"
    status, _, err = _run_on_a_tty(
        [*CIDSERVE, "export", "resnet18", str(out_tty)], _env(tmp_path), 300
    )
    assert status == 0, err
    assert out_tty.stat().st_size > 40_000_000
    assert "export resnet18" in err and "3/3" in err and "done" in err
    out_pipe = tmp_path / "pipe.onnx"
    proc = subprocess.run(
        [*CIDSERVE, "export", "resnet18", str(out_pipe)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3/3" not in proc.stderr and "━" not in proc.stderr
    assert out_pipe.read_bytes() == out_tty.read_bytes()  # same seed, same model


def test_ipfs_add_bars_on_a_terminal_for_large_files_only() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        make = byte_bars(tty)
        small = make("labels.json", 1000)
        small.update(1000)
        small.close()
        bar = make("model.onnx", MIN_BYTES * 2)
        for _ in range(8):
            bar.update(MIN_BYTES // 4)
        bar.close()
        tty.flush()
        drawn = _read_all(master, None, 10)
    os.close(master)
    assert "adding model.onnx" in drawn and "100.0%" in drawn and "8.4 MB" in drawn
    assert "labels.json" not in drawn


def test_nothing_is_drawn_on_a_pipe_or_a_log() -> None:
    log = io.StringIO()
    bar = byte_bars(log)("model.onnx", MIN_BYTES * 2)
    bar.update(MIN_BYTES * 2)
    bar.close()
    with steps(log, "publish") as step:
        step("storing the model", 3, 4)
    assert log.getvalue() == ""


def test_a_failed_step_leaves_the_bar_where_it_stopped() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        with pytest.raises(ValueError), steps(tty, "publish") as step:
            step("checking the model", 1, 4)
            raise ValueError("not an ONNX model")
        tty.flush()
        drawn = _read_all(master, None, 10)
    os.close(master)
    assert "publish" in drawn and "0/4" in drawn and "done" not in drawn
