from django.contrib import admin

from eventbus.models import EventRecord


@admin.register(EventRecord)
class EventAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "channel",
        "operation",
        "key",
        "state",
        "attempts",
        "created_at",
        "finished_at",
        "worker",
    )
    list_filter = ("state", "channel")
    search_fields = ("=id", "key")
    readonly_fields = [f.name for f in EventRecord._meta.fields]
