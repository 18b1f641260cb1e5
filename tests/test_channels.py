"""Every way of writing a row makes exactly one event, in the writer's transaction."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from blog.models import Category, Comment, Post, Tag
from eventbus import Channel
from eventbus.models import EventRecord
from tests.support import database_url

pytestmark = pytest.mark.django_db


def events() -> Counter[tuple[str, str]]:
    return Counter(EventRecord.objects.values_list("channel", "operation"))


def events_after(action, *, before: Counter[tuple[str, str]] | None = None) -> Counter:
    before = events() if before is None else before
    action()
    after = events()
    after.subtract(before)
    return +after


def test_save_and_create_each_make_one_event(author: User, post: Post) -> None:
    assert events_after(lambda: Comment(post=post, author=author, body="hi").save()) == {
        ("comment_created", "INSERT"): 1
    }
    assert events_after(lambda: Comment.objects.create(post=post, author=author, body="x")) == {
        ("comment_created", "INSERT"): 1
    }


def test_bulk_create_makes_one_event_per_row(author: User, post: Post) -> None:
    made = events_after(
        lambda: Comment.objects.bulk_create(
            [Comment(post=post, author=author, body=str(i)) for i in range(250)]
        )
    )
    assert made == {("comment_created", "INSERT"): 250}


def test_m2m_add_remove_clear_make_one_event_per_link(post: Post) -> None:
    tags = Tag.objects.bulk_create([Tag(name=n) for n in ("a", "b", "c")])
    category = Category.objects.create(name="science")
    assert events_after(lambda: post.tags.add(*tags)) == {("post_tags_changed", "INSERT"): 3}
    assert events_after(lambda: post.tags.remove(tags[0])) == {("post_tags_changed", "DELETE"): 1}
    assert events_after(lambda: post.tags.clear()) == {("post_tags_changed", "DELETE"): 2}
    assert events_after(lambda: post.categories.add(category)) == {
        ("post_categories_changed", "INSERT"): 1
    }
    assert events_after(lambda: category.delete()) == {("post_categories_changed", "DELETE"): 1}


def test_queryset_update_makes_an_event_only_when_the_body_changes(post: Post) -> None:
    assert events_after(lambda: Post.objects.filter(pk=post.pk).update(body="new words")) == {
        ("post_edited", "UPDATE"): 1
    }
    assert events_after(lambda: Post.objects.filter(pk=post.pk).update(title="renamed")) == {}
    event = EventRecord.objects.filter(channel="post_edited").get()
    assert event.ordered, "an ordered channel's events are flagged for the per-key index"
    assert not EventRecord.objects.get(channel="post_created").ordered
    assert event.old["body"] == "the analytical engine weaves"
    assert event.new["body"] == "new words"
    assert event.key == str(post.pk)


def test_raw_sql_and_copy_make_events(author: User, post: Post) -> None:
    def raw() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO blog_comment (post_id, author_id, body) VALUES (%s, %s, 'a'), "
                "(%s, %s, 'b')",
                [post.pk, author.pk, post.pk, author.pk],
            )

    def copy() -> None:
        statement = "COPY blog_comment (post_id, author_id, body) FROM STDIN"
        with connection.cursor() as cursor, cursor.copy(statement) as cp:
            for i in range(3):
                cp.write_row((post.pk, author.pk, f"copied {i}"))

    assert events_after(raw) == {("comment_created", "INSERT"): 2}
    assert events_after(copy) == {("comment_created", "INSERT"): 3}


def test_event_row_holds_the_row_and_key(author: User, post: Post) -> None:
    comment = Comment.objects.create(post=post, author=author, body="quoted")
    event = EventRecord.objects.get(channel="comment_created")
    assert (event.state, event.attempts, event.operation) == ("pending", 0, "INSERT")
    assert event.table_name == "blog_comment"
    assert event.key == str(post.pk)
    assert event.old is None
    assert event.new == {
        "id": comment.pk,
        "post_id": post.pk,
        "author_id": author.pk,
        "body": "quoted",
        "created_at": event.new["created_at"],
    }


def test_rollback_leaves_no_event(author: User, post: Post) -> None:
    before = events()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        Comment.objects.create(post=post, author=author, body="never")
        post.tags.add(Tag.objects.create(name="t"))
        raise Abort
    assert events() == before


def test_a_one_megabyte_post_is_written_with_its_event(author: User) -> None:
    body = ("word " * 210_000)[:1_048_576]
    post = Post.objects.create(title="big", body=body, author=author)
    event = EventRecord.objects.get(channel="post_created")
    assert event.new["body"] == body
    assert event.key == str(post.pk)


def test_channel_declaration_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must match"):
        Channel("Bad Name")
    with pytest.raises(ValueError, match="operations"):
        Channel("no_ops_channel", operations=["TRUNCATE"])
    with pytest.raises(ValueError, match="declared twice"):
        Channel("comment_created")


@pytest.mark.django_db(transaction=True)
def test_one_empty_wakeup_per_channel_per_transaction(author: User, post: Post) -> None:
    """NOTIFY carries no row data (it must stay under 8,000 bytes) and is sent once."""
    with psycopg.connect(database_url(), autocommit=True) as listen:
        listen.execute("LISTEN eventbus_comment_created")
        listen.execute("LISTEN eventbus_post_tags_changed")
        with transaction.atomic():
            for i in range(5):  # five statements in one transaction
                Comment.objects.create(post=post, author=author, body="x" * 10_000 + str(i))
            post.tags.add(Tag.objects.create(name="t"))
        notifies = list(listen.notifies(timeout=1.0))
    assert sorted((n.channel, n.payload) for n in notifies) == [
        ("eventbus_comment_created", ""),
        ("eventbus_post_tags_changed", ""),
    ]
