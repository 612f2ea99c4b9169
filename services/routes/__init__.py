"""REST routes, one module per resource: models, inference, health."""

from fastapi import Request

from services.app import Services


def get_services(request: Request) -> Services:
    """FastAPI dependency: the app instance's :class:`Services`."""
    return request.app.state.services  # type: ignore[no-any-return]
