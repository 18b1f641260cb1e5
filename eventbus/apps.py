from importlib import import_module

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class EventbusConfig(AppConfig):
    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Log out of the box, and import the listener modules so their handlers are
        registered in every process."""
        from eventbus import conf
        from eventbus.declaring import autodetector, installed, placement, wiring  # noqa: F401
        from eventbus.integrations import alerts  # noqa: F401 (its check)
        from eventbus.integrations.tasks import queues
        from eventbus.operating import logs
        from eventbus.storing import checks  # noqa: F401 (its checks)

        logs.install_default(conf.get().LOG_LEVEL)
        autodetector.install()

        queues.declare_from_settings()  # the task queues' channels, before listen looks
        for module in conf.get().LISTENER_MODULES:
            _import_listener_module(module)


def _import_listener_module(module: str) -> None:
    """Import one of LISTENER_MODULES; a name that is not a module is a configuration error
    that says which setting to fix (an import error inside the module stays as it is)."""
    try:
        import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise ImproperlyConfigured(
            f'EVENTBUS["LISTENER_MODULES"] lists {module!r}, which is not an importable '
            f"module ({exc}): fix the name, or the EVENTBUS_LISTENER_MODULES variable"
        ) from None
