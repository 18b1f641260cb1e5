import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# The site refuses to serve with DEBUG off on a development or empty secret (blog.checks),
# as `manage.py` commands do: a WSGI server runs no system checks by itself.
from django.core import checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

_refused = [e for e in checks.run_checks(tags=[checks.Tags.security]) if e.is_serious()]
if _refused:
    raise ImproperlyConfigured("; ".join(f"{e.msg} ({e.hint})" for e in _refused))
