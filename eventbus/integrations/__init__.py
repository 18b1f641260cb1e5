"""Integrations with the rest of a Django project: routers, the embedded database, tracing
(OpenTelemetry), alerts on death, outbound requests, the task API."""
