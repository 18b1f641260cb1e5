"""Integrations with the rest of a Django project: routers, the embedded database."""
