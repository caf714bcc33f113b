"""The REST API and dashboard (FastAPI), served by ``nas serve``."""

from nas_service.api.app import create_app

__all__ = ["create_app"]
