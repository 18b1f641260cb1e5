"""The handler of page_viewed. It names no database: eventbus.PrimaryForHandlers sends its
query to the database the event was claimed in ("other"), in the claim's transaction. The
routers send every other query to "default", where this table does not exist."""

from eventbus import Event
from tests.analytics.channels import page_viewed
from tests.analytics.models import PageView


@page_viewed.on
def count_view(event: Event) -> None:
    PageView.objects.filter(pk=event.new["id"]).update(counted=True)
