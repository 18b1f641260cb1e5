"""The reference site, reading from a lagging replica, driven as a client would drive it.

    DATABASE_URL=<primary> REPLICA_DATABASE_URL=<replica> python -m tests.lagging_site

One run, timed against the replica's lag: a new author is created and at once names a
new post with a new tag (POST /api/posts/), whose status URL is polled at once; an admin
is logged in and at once opens the admin. Right after, it reads the same rows through
the site's routers, which read the replica, to show that it has not received them yet.
Prints what it saw as one JSON line (the last), for tests/test_read_your_writes.py.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.contrib.sessions.models import Session  # noqa: E402
from django.test import Client  # noqa: E402

from blog import signing  # noqa: E402
from blog.models import Post  # noqa: E402
from eventbus import read_primary  # noqa: E402


def signed(client: Client, method: str, path: str, payload: Any = None) -> Any:
    body = b"" if payload is None else json.dumps(payload).encode()
    header = {"HTTP_X_EVENTBUS_SIGNATURE": signing.sign(method, path, body)}
    if method == "POST":
        return client.post(path, body, content_type="application/json", **header)
    return client.get(path, **header)


def api() -> dict[str, Any]:
    client = Client()
    name = f"author-{uuid.uuid4().hex[:8]}"
    User.objects.create_user(name)  # a write: the primary
    written = time.monotonic()
    tag = f"tag-{uuid.uuid4().hex[:8]}"  # a new tag: made by this request
    post = {"title": "Fresh", "body": "four words right here", "author": name, "tags": [tag]}
    created = signed(client, "POST", "/api/posts/", post)
    seen: dict[str, Any] = {"created": created.status_code, "created_body": created.json()}
    if created.status_code == 202:
        status = signed(client, "GET", created.json()["status_url"])
        seen.update(status=status.status_code, status_body=status.json())
        post_on_replica = Post.objects.filter(pk=created.json()["post_id"]).exists()
    else:
        post_on_replica = None
    # Through the routers (the replica), after the answers: had it the rows yet?
    seen["replica_had_post"] = post_on_replica
    seen["replica_had_author"] = User.objects.filter(username=name).exists()
    seen["seconds"] = time.monotonic() - written
    if created.status_code == 202:
        with read_primary():
            made = Post.objects.get(pk=created.json()["post_id"])
            seen["tags"] = list(made.tags.values_list("name", flat=True))
        seen["tags_asked"] = [tag]
    return seen


def admin() -> dict[str, Any]:
    client = Client()
    staff = User.objects.create_superuser(f"staff-{uuid.uuid4().hex[:8]}")  # no password
    client.force_login(staff)  # the session is written: the primary
    written = time.monotonic()
    index = client.get("/admin/")
    key = client.session.session_key
    return {
        "admin": index.status_code,
        "admin_location": index.get("Location"),
        "replica_had_session": Session.objects.filter(session_key=key).exists(),
        "seconds": time.monotonic() - written,
    }


if __name__ == "__main__":
    print(json.dumps({"api": api(), "admin": admin()}))
