from importlib import import_module

from django.apps import AppConfig


class EventbusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Import the listener modules so their handlers are registered in every process."""
        from eventbus import conf
        from eventbus.declaring import wiring  # noqa: F401 (they register checks
        from eventbus.integrations.tasks import queues

        queues.declare_from_settings()  # the task queues' channels, before listen looks
        for module in conf.get().LISTENER_MODULES:
            import_module(module)
