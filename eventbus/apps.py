from importlib import import_module

from django.apps import AppConfig


class EventbusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Import the listener modules so their handlers are registered in every process."""
        from eventbus import conf
        from eventbus.declaring import autodetector, installed, wiring  # noqa: F401 (checks)

        autodetector.install()

        for module in conf.get().LISTENER_MODULES:
            import_module(module)
