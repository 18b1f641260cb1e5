"""The webhook API: accept work at once (202), do it in the listener, report its status.

- ``POST /api/posts/``: a post; its processing runs as events of the post's channels.
- ``POST /api/emails/``: emails to a list of addresses; they go out from a task of
  Django's task API (``blog.tasks.send_emails``), which the same listener runs.

Every request carries `X-Eventbus-Signature: t=<unix>,v1=<hex>`, an HMAC-SHA256 with a
shared secret over the time, the method, the path and the body; a stale, forged or
replayed one is refused (see blog/signing.py).

Each view that reads, reads the primary (``@read_primary``), even when the site's reads
go to a replica: each follows a write (the author a client just made, the tags this
request made) or reports a status polled right after a 202.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import channels
import eventbus
from blog import signing, tasks
from blog.models import Category, Post, Tag
from eventbus import read_primary
from eventbus.event import DEAD, FAILED, PENDING
from eventbus.integrations import outbound
from eventbus.models import EventRecord
from eventbus.operating import status

try:  # Django 6.0+
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
except ImportError:
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch

# The channels whose events make up a post's processing.
PROCESSING_CHANNELS = ("post_created", "post_tags_changed", "post_categories_changed")


def _error(status_code: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status_code)


def _unsigned(request: HttpRequest, once: bool | None = None) -> JsonResponse | None:
    """The refusal of a request that is too large (413) or not signed now by us (401)."""
    limit = getattr(settings, "WEBHOOK_MAX_BODY", 1024 * 1024)
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _error(400, "bad Content-Length")
    if length > limit:
        return _error(413, f"body of {length} bytes is over the limit of {limit}")
    try:
        method = request.method or ""
        header = request.headers.get(signing.HEADER)
        once = method == "POST" if once is None else once
        signing.verify(header, method, request.path, request.body, once=once)
    except signing.SignatureError as exc:
        return _error(401, str(exc))
    return None


class BadRequest(ValueError):
    pass


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a BadRequest saying why not."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _parse(body: bytes) -> dict[str, Any]:
    data = _json_object(body)
    missing = [k for k in ("title", "body", "author") if not isinstance(data.get(k), str)]
    if missing:
        raise BadRequest(f"missing or not a string: {', '.join(missing)}")
    for k in ("tags", "categories"):
        if not all(isinstance(x, str) and x for x in data.get(k, [])):
            raise BadRequest(f"{k} must be a list of names")
    if url := data.get("callback_url"):
        try:
            URLValidator(schemes=["http", "https"])(url)
        except ValidationError:
            raise BadRequest(f"callback_url is not an http(s) URL: {url!r}") from None
        try:  # checked again when it is called: the name may point elsewhere by then
            outbound.check(
                url,
                allow_private=getattr(settings, "CALLBACK_ALLOW_PRIVATE", False),
                deadline=getattr(settings, "CALLBACK_DEADLINE", outbound.DEADLINE),
            )
        except outbound.OutboundError as exc:
            raise BadRequest(f"callback_url refused: {exc}") from None
    return data


@csrf_exempt
@require_POST
@read_primary
def create_post(request: HttpRequest) -> JsonResponse:
    key = request.headers.get("Idempotency-Key")
    # With a key, a repeat is answered from the key (and writes nothing), not refused.
    if refused := _unsigned(request, once=None if key is None else False):
        return refused
    if key is not None and not (0 < len(key) <= 255 and key.isascii()):
        return _error(400, "Idempotency-Key must be 1 to 255 ASCII characters")
    try:
        data = _parse(request.body)
    except BadRequest as exc:
        return _error(400, str(exc))
    author = get_user_model().objects.filter(username=data["author"]).first()
    if author is None:
        return _error(400, f"unknown author: {data['author']!r}")
    if key is None:
        return _create_post(data, author)
    return idempotent(key, request.body, lambda: _create_post(data, author))


def _create_post(data: dict[str, Any], author: Any) -> JsonResponse:
    # The post, its tags and categories: all or nothing, and one collection with what
    # their handlers cause (processing, the callback): one state to report.
    with eventbus.collection() as collection:
        post = Post.objects.create(
            title=data["title"],
            body=data["body"],
            author=author,
            callback_url=data.get("callback_url") or None,
        )
        post.tags.add(*_named(Tag, data.get("tags", [])))
        post.categories.add(*_named(Category, data.get("categories", [])))
    status_url = reverse("post-processing", args=[post.pk])
    return JsonResponse(
        {
            "post_id": post.pk,
            "status_url": status_url,
            "collection": collection,
            "collection_url": reverse("collection", args=[collection]),
        },
        status=202,
    )


def _named(model: Any, names: list[str]) -> list[Any]:
    """The rows of these names, made where missing, in one statement, in name order: two
    requests making the same new names at once both succeed (ON CONFLICT DO NOTHING waits
    for the other's commit), and never take the names' locks in opposite orders (one by
    one, get_or_create could deadlock, a 500)."""
    if not names:
        return []
    new = [model(name=n) for n in sorted(set(names))]
    model.objects.bulk_create(new, ignore_conflicts=True)
    return list(model.objects.filter(name__in=names))


def idempotent(key: str, body: bytes, create: Any) -> JsonResponse:
    """The first response to `key`, made by `create()` once. A repeat with the same body
    gets it again; with another body, a 422. Concurrent requests with one key wait for the
    first one's commit (the key's insert conflicts), so exactly one runs `create`."""
    digest = hashlib.sha256(body).hexdigest()
    ttl = getattr(settings, "IDEMPOTENCY_KEY_TTL", 24 * 3600)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM blog_idempotencykey WHERE key = %s "
            "AND created_at < now() - make_interval(secs => %s)",
            [key, ttl],
        )
        cursor.execute(
            "INSERT INTO blog_idempotencykey (key, request_hash, created_at) "
            "VALUES (%s, %s, now()) ON CONFLICT (key) DO NOTHING RETURNING 1",
            [key, digest],
        )
        if cursor.fetchone() is not None:  # the first: do it, and keep its answer
            response = create()
            cursor.execute(
                "UPDATE blog_idempotencykey SET status = %s, response = %s WHERE key = %s",
                [response.status_code, response.content.decode(), key],
            )
            if int(time.time()) % 10 == 0:  # now and then: forget expired keys
                cursor.execute(
                    "DELETE FROM blog_idempotencykey "
                    "WHERE created_at < now() - make_interval(secs => %s)",
                    [ttl],
                )
            return response
        cursor.execute(
            "SELECT request_hash, status, response FROM blog_idempotencykey WHERE key = %s",
            [key],
        )
        request_hash, status_code, stored = cursor.fetchone()
    if request_hash != digest:
        return _error(422, "this Idempotency-Key was used with another body")
    data = json.loads(stored) if isinstance(stored, str) else stored
    return JsonResponse(data, status=status_code)


@require_GET
@read_primary
def event_status(request: HttpRequest, event_id: int) -> JsonResponse:
    if refused := _unsigned(request):
        return refused
    record = EventRecord.objects.filter(pk=event_id).first()
    if record is None:
        return _error(404, f"no event {event_id}")
    return JsonResponse(status.describe([record])[0])


@require_GET
@read_primary
def post_processing(request: HttpRequest, post_id: int) -> JsonResponse:
    if refused := _unsigned(request):
        return refused
    post = Post.objects.filter(pk=post_id).first()
    if post is None:
        return _error(404, f"no post {post_id}")
    events = _processing_events(post_id)
    state = status.worst(e["state"] for e in events) if events else PENDING
    errors = [e["last_error"].splitlines()[0] for e in events if e["last_error"]]
    return JsonResponse(
        {
            "post_id": post.pk,
            "state": state,
            "error": errors[-1] if errors and state in (DEAD, FAILED) else None,
            "word_count": post.word_count,
            "processed_at": post.processed_at.isoformat() if post.processed_at else None,
            "events": events,
        }
    )


def _processing_events(post_id: int) -> list[dict[str, Any]]:
    """The post's processing events and their collections' members (its callback): a
    post made through the API is one collection; one made elsewhere may be several."""
    records = EventRecord.objects.filter(channel__in=PROCESSING_CHANNELS, key=str(post_id))
    collections = sorted({r.correlation_id or r.id for r in records})
    found = {e["id"]: e for c in collections for e in status.collection(c)["events"]}
    found.update((e["id"], e) for e in status.describe(list(records)))
    return [found[i] for i in sorted(found)]


@require_GET
@read_primary
def collection(request: HttpRequest, collection_id: int) -> JsonResponse:
    """A collection's state (the worst of its events') and its events; any member's id
    finds it."""
    if refused := _unsigned(request):
        return refused
    found = status.collection_id(collection_id)
    if found is None:
        return _error(404, f"no collection {collection_id}")
    result = status.collection(found)
    return JsonResponse(result)


MAX_ADDRESSES = 1000


def _parse_emails(body: bytes) -> tuple[list[str], str, str]:
    """{"addresses": [...], "subject": "...", "body": "..."}: every address valid."""
    data = _json_object(body)
    addresses = _addresses(data)
    missing = [k for k in ("subject", "body") if not isinstance(data.get(k), str)]
    if missing:
        raise BadRequest(f"missing or not a string: {', '.join(missing)}")
    return addresses, data["subject"], data["body"]


def _addresses(data: dict[str, Any]) -> list[str]:
    addresses = data.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        raise BadRequest("addresses must be a non-empty list of email addresses")
    if len(addresses) > MAX_ADDRESSES:
        raise BadRequest(f"at most {MAX_ADDRESSES} addresses per request")
    for address in addresses:
        try:
            validate_email(address)
        except (ValidationError, TypeError):
            raise BadRequest(f"not an email address: {address!r}") from None
    return addresses


def _parse_addresses(body: bytes) -> list[str]:
    """{"addresses": [...]}: every address valid."""
    return _addresses(_json_object(body))


@csrf_exempt
@require_POST
def send_emails(request: HttpRequest) -> JsonResponse:
    """Enqueue the emails and answer at once; the listener sends them."""
    if refused := _unsigned(request):
        return refused
    try:
        addresses, subject, body = _parse_emails(request.body)
    except BadRequest as exc:
        return _error(400, str(exc))
    result = tasks.send_emails.enqueue(addresses, subject, body)
    status_url = reverse("email-task", args=[result.id])
    return JsonResponse(
        {"task_id": result.id, "status": result.status, "status_url": status_url}, status=202
    )


@csrf_exempt
@require_POST
def send_digest(request: HttpRequest) -> JsonResponse:
    """Start the digest chain (collect the newest posts, then email them); answer at once
    with the chain's collection, whose status URL follows every step and the end."""
    if refused := _unsigned(request):
        return refused
    try:
        addresses = _parse_addresses(request.body)
    except BadRequest as exc:
        return _error(400, str(exc))
    started = channels.post_digest.start({"addresses": addresses})
    return JsonResponse(
        {"collection": started, "status_url": reverse("collection", args=[started])}, status=202
    )


@require_GET
@read_primary
def email_task(request: HttpRequest, task_id: str) -> JsonResponse:
    """The email task's status: READY, RUNNING, SUCCESSFUL or FAILED, with its errors."""
    if refused := _unsigned(request):
        return refused
    try:
        result = tasks.send_emails.get_result(task_id)
    except (TaskResultDoesNotExist, TaskResultMismatch):
        return _error(404, f"no email task {task_id}")

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    successful = result.status == "SUCCESSFUL"
    return JsonResponse(
        {
            "task_id": result.id,
            "status": result.status,
            "attempts": result.attempts,
            "errors": [(e.traceback.splitlines() or [""])[0] for e in result.errors],
            "return_value": result.return_value if successful else None,
            "enqueued_at": iso(result.enqueued_at),
            "finished_at": iso(result.finished_at),
        }
    )
