"""What this process and its container have in memory: RSS, the cgroup limit, the budget.

Linux only where it matters (``/proc``, cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``); elsewhere the figures fall back to what ``os`` can say.
"""

from __future__ import annotations

import os
from pathlib import Path

_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
_NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number

BUDGET_FRACTION = 0.5
"""Default share of the container's (or machine's) memory one session build may take."""


def rss_bytes() -> int:
    """Resident set size of this process now (0 where ``/proc`` is absent)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def vm_bytes() -> int:
    """Virtual address space of this process now (0 where ``/proc`` is absent)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cgroup_memory_limit(files: tuple[Path, ...] = _CGROUP_FILES) -> int | None:
    """The container's memory limit in bytes, or ``None`` when there is none."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return None
        value = int(text)
        return None if value >= _NO_LIMIT else value
    return None


def physical_memory() -> int:
    """The machine's RAM in bytes (4 GiB when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 << 30


def default_session_budget() -> int:
    """Half of the container's memory limit, else half of the machine's RAM."""
    limit = cgroup_memory_limit()
    total = min(limit, physical_memory()) if limit else physical_memory()
    return int(total * BUDGET_FRACTION)
