from django.apps import AppConfig


class BlogConfig(AppConfig):
    name = "blog"
    label = "blog"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from blog import checks  # noqa: F401 - registers the secrets check
