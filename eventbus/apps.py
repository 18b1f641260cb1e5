from importlib import import_module

from django.apps import AppConfig


class EventbusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Log out of the box, and import the listener modules so their handlers are
        registered in every process."""
        from eventbus import conf
        from eventbus.declaring import autodetector, installed, wiring  # noqa: F401 (checks)
        from eventbus.integrations.tasks import queues
        from eventbus.operating import logs

        logs.install_default(conf.get().LOG_LEVEL)
        autodetector.install()

        queues.declare_from_settings()  # the task queues' channels, before listen looks
        for module in conf.get().LISTENER_MODULES:
            import_module(module)
