"""The Django admin pages of the engine: events, workers, task results.

``eventbus/admin.py`` imports the modules here, so that Django's admin autodiscovery
registers them; each page has a module of its own (the event page alone has a dozen
read-only views of one row).
"""
