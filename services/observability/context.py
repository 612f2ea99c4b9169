"""The request being handled: its id, model and stage timings, as a context variable.

The HTTP middleware opens a :class:`RequestInfo` per request (:func:`begin_request`); code
deeper in the request (the repository, the data plane) adds what it knows with
:func:`note_model` and :func:`note_stages`; every log line written meanwhile carries the
request's id (:mod:`services.observability.logs`).
"""

from __future__ import annotations

from contextvars import ContextVar, Token


class RequestInfo:
    """What is known about the request being handled; filled in as it goes."""

    __slots__ = ("model", "request_id", "stages")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model: str | None = None
        self.stages: dict[str, float] | None = None


_current: ContextVar[RequestInfo | None] = ContextVar("cidserve_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being handled in this task, if any."""
    return _current.get()


def note_model(model_id: str) -> None:
    """Name the (loaded, known) model this request is about: the ``model`` label and log field."""
    info = _current.get()
    if info is not None:
        info.model = model_id


def note_stages(stages: dict[str, float]) -> None:
    """Attach the request's stage timings (milliseconds) to its log line."""
    info = _current.get()
    if info is not None:
        info.stages = stages


def begin_request(request_id: str) -> tuple[RequestInfo, Token[RequestInfo | None]]:
    """Make a new :class:`RequestInfo` current; pass the token to :func:`end_request`."""
    info = RequestInfo(request_id)
    return info, _current.set(info)


def end_request(token: Token[RequestInfo | None]) -> None:
    _current.reset(token)
