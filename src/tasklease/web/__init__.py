"""``tasklease web``: the REST API under ``/api`` and the live dashboard, one ASGI app (docs/api.md)."""
