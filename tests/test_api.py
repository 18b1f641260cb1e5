"""The webhook API: 202 at once, processing in the listener, status and callbacks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from blog import signing
from blog.models import Post, Tag
from eventbus.models import EventRecord
from eventbus.testing import run_events
from tests.support import HTTPReceiver, Listener, database_url, wait_until


def call(
    client: Client,
    method: str,
    path: str,
    payload: object = None,
    raw: bytes | None = None,
    signature: str | None = None,
):
    body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
    headers = {"HTTP_X_EVENTBUS_SIGNATURE": signature or signing.sign(method, path, body)}
    if method == "POST":
        return client.post(path, body, content_type="application/json", **headers)
    return client.get(path, **headers)


NEW_POST = {
    "title": "Hello",
    "body": "three small words",
    "author": "ada",
    "tags": ["python", "postgres"],
    "categories": ["how-to"],
}


@pytest.mark.django_db
def test_a_signed_post_is_accepted_at_once_with_a_status_url(client: Client, author: User) -> None:
    response = call(client, "POST", "/api/posts/", NEW_POST)
    assert response.status_code == 202
    data = response.json()
    post = Post.objects.get(pk=data["post_id"])
    assert data["status_url"] == f"/api/posts/{post.pk}/processing/"
    assert sorted(post.tags.values_list("name", flat=True)) == ["postgres", "python"]
    assert list(post.categories.values_list("name", flat=True)) == ["how-to"]
    assert post.word_count is None, "processing happens in the listener, not the request"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "signature", "status", "message"),
    [
        (json.dumps(NEW_POST).encode(), "sha256=00", 401, "malformed X-Eventbus-Signature"),
        (json.dumps(NEW_POST).encode(), "t=1,v1=00", 401, "stale X-Eventbus-Signature"),
        (b"{not json", None, 400, "body is not JSON"),
        (b"[1, 2]", None, 400, "body must be a JSON object"),
        (json.dumps({"title": "t"}).encode(), None, 400, "missing or not a string: body, author"),
        (json.dumps({**NEW_POST, "author": "nobody"}).encode(), None, 400, "unknown author"),
        (json.dumps({**NEW_POST, "callback_url": "ftp://x"}).encode(), None, 400, "callback_url"),
        (json.dumps({**NEW_POST, "tags": [3]}).encode(), None, 400, "tags must be a list"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_write_nothing(
    client: Client, author: User, raw: bytes, signature: str | None, status: int, message: str
) -> None:
    response = call(client, "POST", "/api/posts/", raw=raw, signature=signature)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert not Post.objects.exists() and not EventRecord.objects.exists()


@pytest.mark.django_db
def test_unsigned_requests_are_refused(client: Client) -> None:
    response = client.get("/api/events/1/")
    assert response.status_code == 401
    assert response.json() == {"error": "missing X-Eventbus-Signature header"}


@pytest.mark.django_db
def test_status_endpoints_follow_processing(client: Client, author: User) -> None:
    post_id = call(client, "POST", "/api/posts/", NEW_POST).json()["post_id"]
    path = f"/api/posts/{post_id}/processing/"
    pending = call(client, "GET", path).json()
    assert pending["state"] == "pending" and len(pending["events"]) == 4

    created = EventRecord.objects.get(channel="post_created")
    event_path = f"/api/events/{created.pk}/"
    run_events()
    done = call(client, "GET", path).json()
    assert (done["state"], done["word_count"], done["error"]) == ("done", 3, None)
    event = call(client, "GET", event_path).json()
    assert (event["state"], event["channel"], event["attempts"]) == ("done", "post_created", 1)
    assert call(client, "GET", "/api/events/999999/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_an_event_held_by_a_worker_reports_running(client: Client, author: User) -> None:
    post_id = call(client, "POST", "/api/posts/", NEW_POST).json()["post_id"]
    created = EventRecord.objects.get(channel="post_created")
    with psycopg.connect(database_url()) as worker:
        worker.execute("SELECT 1 FROM eventbus_event WHERE id = %s FOR UPDATE", [created.pk])
        assert call(client, "GET", f"/api/events/{created.pk}/").json()["state"] == "running"
        post = call(client, "GET", f"/api/posts/{post_id}/processing/").json()
        assert post["state"] == "running"


@pytest.fixture
def local_callbacks(settings: Settings) -> None:
    """The receivers here are on 127.0.0.1: allow private callback addresses."""
    settings.CALLBACK_ALLOW_PRIVATE = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_callback_is_posted_when_processing_ends_and_retried_on_failure(
    client: Client, author: User, start_listener: Callable[..., Listener], local_callbacks: None
) -> None:
    receiver = HTTPReceiver(statuses=[503, 200])  # down once, then up
    try:
        start_listener(
            workers=1,
            env_extra={"EVENTBUS_RETRY": '{"base_delay": 0.1}', "CALLBACK_ALLOW_PRIVATE": "1"},
        )
        response = call(client, "POST", "/api/posts/", {**NEW_POST, "callback_url": receiver.url})
        post_id = response.json()["post_id"]
        wait_until(lambda: len(receiver.requests) == 2, 20, what="the callback, retried once")
    finally:
        receiver.stop()
    headers, body = receiver.requests[-1]
    outcome = json.loads(body)
    assert (outcome["post_id"], outcome["state"], outcome["word_count"]) == (post_id, "done", 3)
    assert signing.valid(headers["X-Eventbus-Signature"], "POST", "/hooks/post-processed", body)
    callback = EventRecord.objects.get(channel="post_processing_finished")
    wait_until(lambda: EventRecord.objects.get(pk=callback.pk).state == "done", 10)
    callback.refresh_from_db()
    assert callback.attempts == 2
    assert "HTTP 503" in callback.errors[0]["error"], "the failed attempt is visible"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_callback_reports_processing_that_died(
    client: Client, author: User, start_listener: Callable[..., Listener], local_callbacks: None
) -> None:
    receiver = HTTPReceiver(statuses=[200])
    try:
        response = call(client, "POST", "/api/posts/", {**NEW_POST, "callback_url": receiver.url})
        post_id = response.json()["post_id"]
        Post.objects.filter(pk=post_id).delete()  # gone before the listener ran
        start_listener(workers=1, env_extra={"CALLBACK_ALLOW_PRIVATE": "1"})
        wait_until(lambda: receiver.requests, 20, what="the callback")
    finally:
        receiver.stop()
    outcome = json.loads(receiver.requests[0][1])
    assert outcome["state"] == "dead"
    assert outcome["error"] == f"RowGone: post {post_id} no longer exists"


# --- Requests that cannot be replayed or forged (issue 13) ----------------------------


def post_signed(client: Client, header: str, body: bytes | None = None, **extra: str):
    body = json.dumps(NEW_POST).encode() if body is None else body
    return client.post(
        "/api/posts/",
        body,
        content_type="application/json",
        HTTP_X_EVENTBUS_SIGNATURE=header,
        **extra,
    )


@pytest.mark.django_db
def test_the_identical_signed_post_sent_twice_is_refused_the_second_time(
    client: Client, author: User
) -> None:
    """Reproduced before: the same signed POST twice made two posts."""
    body = json.dumps(NEW_POST).encode()
    header = signing.sign("POST", "/api/posts/", body)
    assert post_signed(client, header, body).status_code == 202
    again = post_signed(client, header, body)
    assert again.status_code == 401
    assert "replayed X-Eventbus-Signature" in again.json()["error"]
    assert Post.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("t=1,v1=" + "0" * 64, "stale"),  # signed in 1970
        ("sha256=abc", "malformed"),  # the old format
        ("t=,v1=", "malformed"),
        ("v1=" + "0" * 64, "malformed"),  # no time
        ("t=éé,v1=00", "malformed"),  # not ASCII: a 500 before
    ],
)
def test_a_stale_or_malformed_signature_is_a_401_with_its_reason(
    client: Client, author: User, header: str, reason: str
) -> None:
    response = post_signed(client, header)
    assert response.status_code == 401
    assert response.json()["error"].startswith(reason)
    assert not Post.objects.exists()


@pytest.mark.django_db
def test_an_old_signature_is_refused_even_when_its_hmac_is_right(
    client: Client, author: User
) -> None:
    body = json.dumps(NEW_POST).encode()
    old = signing.sign("POST", "/api/posts/", body, timestamp=int(time.time()) - 301)
    response = post_signed(client, old, body)
    assert response.status_code == 401 and "stale" in response.json()["error"]


@pytest.mark.django_db
def test_a_rotated_secret_is_accepted_while_listed_as_previous(
    client: Client, author: User, settings
) -> None:
    """Rotation: the site takes the new secret and still accepts the old one; senders
    move over; then the old one is dropped and refused."""
    body = json.dumps(NEW_POST).encode()
    settings.WEBHOOK_SECRET, settings.WEBHOOK_PREVIOUS_SECRETS = "new-secret", ["old-secret"]
    by_old = signing.sign("POST", "/api/posts/", body, secret="old-secret")
    assert post_signed(client, by_old, body).status_code == 202
    by_new = signing.sign("POST", "/api/posts/", other := body.replace(b"Hello", b"Hi"))
    assert post_signed(client, by_new, other).status_code == 202
    settings.WEBHOOK_PREVIOUS_SECRETS = []
    third = body.replace(b"Hello", b"Hey")
    by_old = signing.sign("POST", "/api/posts/", third, secret="old-secret")
    refused = post_signed(client, by_old, third)
    assert refused.status_code == 401 and refused.json()["error"].startswith("bad")
    assert Post.objects.count() == 2


@pytest.mark.django_db
def test_a_body_over_the_limit_is_a_413(client: Client, author: User, settings) -> None:
    settings.WEBHOOK_MAX_BODY = 1000
    body = json.dumps({**NEW_POST, "body": "word " * 500}).encode()
    response = post_signed(client, signing.sign("POST", "/api/posts/", body), body)
    assert response.status_code == 413
    assert not Post.objects.exists()


# --- Idempotent ingestion (issue 13) --------------------------------------------------


def post_with_key(client: Client, key: str, payload: dict | None = None):
    body = json.dumps(payload or NEW_POST).encode()
    return post_signed(
        client, signing.sign("POST", "/api/posts/", body), body, HTTP_IDEMPOTENCY_KEY=key
    )


@pytest.mark.django_db
def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_writes_nothing(
    client: Client, author: User
) -> None:
    """Reproduced before: a sender that timed out and retried made a second post."""
    first = post_with_key(client, "order-41")
    again = post_with_key(client, "order-41")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert Post.objects.count() == 1
    other = post_with_key(client, "order-41", {**NEW_POST, "title": "Another"})
    assert other.status_code == 422
    assert "another body" in other.json()["error"]
    assert Post.objects.count() == 1


@pytest.mark.django_db
def test_an_expired_idempotency_key_is_forgotten(client: Client, author: User) -> None:
    from blog.models import IdempotencyKey

    first = post_with_key(client, "order-42").json()
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    second = post_with_key(client, "order-42").json()
    assert second["post_id"] != first["post_id"]


def concurrently(n: int, request: Callable[[Client], object]) -> list:
    """`request` from n threads at once, each with its own client and connection."""
    barrier, results = threading.Barrier(n), []

    def run() -> None:
        try:
            barrier.wait(10)
            results.append(request(Client()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_requests_with_one_key_make_exactly_one_post(author: User) -> None:
    responses = concurrently(20, lambda c: post_with_key(c, "order-43"))
    assert [r.status_code for r in responses] == [202] * 20
    assert len({r.json()["post_id"] for r in responses}) == 1
    assert Post.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_making_the_same_new_tags_never_fail(author: User) -> None:
    """20 posts at once, making the same 3 new tags, half of them listing the tags in the
    opposite order: every request is a 202, and each tag exists once."""
    names = ["new-a", "new-b", "new-c"]

    def post(client: Client) -> object:
        tags = names if threading.get_ident() % 2 else names[::-1]
        key = f"tagging-{threading.get_ident()}"
        return post_with_key(client, key, {**NEW_POST, "tags": tags})

    responses = concurrently(20, post)
    assert [r.status_code for r in responses] == [202] * 20
    assert Post.objects.count() == 20
    assert Tag.objects.filter(name__in=names).count() == 3


# --- Collections and chains (issue 13) --------------------------------------------------


@pytest.mark.django_db
def test_a_posts_collection_holds_its_links_processing_and_callback_with_the_worst_state(
    client: Client, author: User, settings
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    receiver = HTTPReceiver(statuses=[503] * 10)  # the sender's callback receiver is down
    try:
        answer = call(client, "POST", "/api/posts/", {**NEW_POST, "callback_url": receiver.url})
        collection_url = answer.json()["collection_url"]
        assert call(client, "GET", collection_url).json()["state"] == "pending"
        run_events()
    finally:
        receiver.stop()
    post_id = answer.json()["post_id"]
    found = call(client, "GET", collection_url).json()
    channels = sorted(e["channel"] for e in found["events"])
    assert channels == [
        "post_categories_changed",
        "post_created",
        "post_processing_finished",  # the callback, caused by the processing
        "post_tags_changed",
        "post_tags_changed",
    ]
    callback = next(e for e in found["events"] if e["channel"] == "post_processing_finished")
    assert callback["state"] in ("failed", "dead") and found["state"] == callback["state"]
    processing = call(client, "GET", f"/api/posts/{post_id}/processing/").json()
    assert processing["state"] == callback["state"]  # processed, but the callback is not
    assert processing["word_count"] == 3
    member = f"/api/collections/{callback['id']}/"  # any member's id finds it
    assert call(client, "GET", member).json()["collection"] == found["collection"]
    assert call(client, "GET", "/api/collections/999999/").status_code == 404


@pytest.mark.django_db
def test_a_digest_chain_runs_its_steps_in_order_and_reports_through_one_status_url(
    client: Client, author: User, settings, smtp
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
    Post.objects.create(title="Engines", body="b", author=author)
    answer = call(client, "POST", "/api/digests/", {"addresses": ["bob@example.com"]})
    assert answer.status_code == 202
    run_events(["post_digest"])
    found = call(client, "GET", answer.json()["status_url"]).json()
    assert found["state"] == "done"
    assert [e["state"] for e in found["events"]] == ["done"] * 3  # two steps and the end
    [message] = smtp.mailbox.snapshot()
    assert message["Subject"] == "1 new posts" and "- Engines" in message.get_payload()


@pytest.mark.django_db
def test_a_digest_that_dies_collecting_never_sends_and_its_end_still_runs(
    client: Client, settings, smtp
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp.port
    answer = call(client, "POST", "/api/digests/", {"addresses": ["bob@example.com"]})
    run_events(["post_digest"])  # no posts: collecting gives up
    found = call(client, "GET", answer.json()["status_url"]).json()
    assert found["state"] == "dead"
    first, end = found["events"]
    assert first["last_error"].startswith("GiveUp: no posts to send")
    assert (end["state"], end["caused_by"]) == ("done", first["id"])
    assert smtp.mailbox.snapshot() == []
