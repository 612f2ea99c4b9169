"""What ``cidserve serve`` checks before it starts: settings that would run, but unsafely.

* No admin token (``CIDSERVE_ADMIN_TOKEN`` / ``CIDSERVE_ADMIN_TOKEN_FILE``) on an address other
  than loopback (127.0.0.0/8, ``::1``, ``localhost``): anyone who reaches the port could load
  and unload models. Refused, unless ``CIDSERVE_ALLOW_OPEN_CONTROL_PLANE`` says so (then a
  warning).
* Several worker processes with signed requests (a chain configured) and no Redis: each
  worker would keep its own nonce store, so one signed request could be replayed once on every
  other worker. Refused.
"""

from __future__ import annotations

from services.http.control import is_loopback
from services.settings import Settings


class PreflightError(Exception):
    """The service must not start as configured; the message says why and what to set."""


def check_serve(settings: Settings) -> list[str]:
    """Raise :class:`PreflightError` when ``settings`` must not be served; return the
    warnings to log when they may."""
    warnings: list[str] = []
    if settings.admin_secret is None and not is_loopback(settings.host):
        if not settings.allow_open_control_plane:
            raise PreflightError(
                f"refusing to serve on {settings.host or 'every address'!s} without "
                "CIDSERVE_ADMIN_TOKEN: anyone who reaches the port could load and unload "
                "models. Set CIDSERVE_ADMIN_TOKEN (or CIDSERVE_ADMIN_TOKEN_FILE) and send "
                "'Authorization: Bearer <token>' on control-plane requests, or bind a loopback "
                "address (CIDSERVE_HOST=127.0.0.1), or set CIDSERVE_ALLOW_OPEN_CONTROL_PLANE=true "
                "to run with an open control plane anyway"
            )
        warnings.append(
            f"the control plane is open on {settings.host or 'every address'}: no "
            "CIDSERVE_ADMIN_TOKEN and CIDSERVE_ALLOW_OPEN_CONTROL_PLANE=true, so anyone who "
            "reaches the port may load and unload models"
        )
    if settings.workers > 1 and settings.licensing_enabled and settings.redis_url is None:
        raise PreflightError(
            f"refusing to start {settings.workers} workers with signed requests (licensing on "
            "a chain) and no CIDSERVE_REDIS_URL: each worker would keep its own nonce store, so "
            f"a signed request could be replayed {settings.workers - 1} more time(s), once on "
            "every other worker. Set CIDSERVE_REDIS_URL (the workers then share one nonce "
            "store), or run one worker (--workers 1)"
        )
    return warnings
