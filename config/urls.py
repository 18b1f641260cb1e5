from django.contrib import admin
from django.urls import path

from blog import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/posts/", api.create_post, name="create-post"),
    path("api/posts/<int:post_id>/processing/", api.post_processing, name="post-processing"),
    path("api/events/<int:event_id>/", api.event_status, name="event-status"),
    path("api/collections/<int:collection_id>/", api.collection, name="collection"),
    path("api/digests/", api.send_digest, name="send-digest"),
    path("api/emails/", api.send_emails, name="send-emails"),
    path("api/emails/<str:task_id>/", api.email_task, name="email-task"),
]
