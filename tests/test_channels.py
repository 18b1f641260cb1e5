"""Every way of writing a row makes exactly one event, in the writer's transaction."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import NotSupportedError, connection, models, transaction
from django.test.utils import isolate_apps

from blog.models import Category, Comment, Post, Tag
from eventbus import INSERT, UPDATE, Channel, compat
from eventbus.declaring.channel import channel_trigger_errors
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


def test_an_update_that_changes_a_primary_key_is_refused_with_a_clear_error(post: Post) -> None:
    """Old and new rows are paired by primary key: a changed key would make no event, silently."""
    with pytest.raises(NotSupportedError) as refused, transaction.atomic():
        Post.objects.filter(pk=post.pk).update(id=post.pk + 1000, body="moved")
    message = str(refused.value)
    assert "eventbus channel post_edited" in message
    assert "UPDATE of table blog_post changed the primary key (id)" in message
    assert "deleting the row and inserting it" in refused.value.__cause__.diag.message_hint
    assert Post.objects.filter(pk=post.pk, body=post.body).exists(), "the write was refused"
    assert events_after(lambda: Post.objects.filter(pk=post.pk).update(body="kept")) == {
        ("post_edited", "UPDATE"): 1
    }, "an ordinary update still makes its event"


# Channels of models with a composite primary key (Django 5.2 CompositePrimaryKey).
rating_changed = Channel("test_rating_changed", operations=[INSERT, UPDATE], key="post")
rating_by_pk = Channel("test_rating_by_pk", operations=[INSERT], key="pk")
# Handlers, so that the project stays wired (eventbus.W001) while these are declared.
rating_changed.on(lambda event: None)
rating_by_pk.on(lambda event: None)


needs_composite_pk = pytest.mark.skipif(
    not compat.HAS_PK_FIELDS, reason="CompositePrimaryKey is new in Django 5.2"
)


@needs_composite_pk
@pytest.mark.django_db(transaction=True)
@isolate_apps("blog")
def test_a_model_with_a_composite_primary_key_makes_update_events(post: Post) -> None:
    class Rating(models.Model):
        pk = models.CompositePrimaryKey("post", "voter")
        post = models.ForeignKey(Post, on_delete=models.CASCADE)
        voter = models.IntegerField()
        stars = models.IntegerField()

        class Meta:
            app_label = "blog"
            db_table = "test_rating"
            triggers = rating_changed.triggers()

    assert channel_trigger_errors([Rating]) == []
    with connection.schema_editor() as editor:
        editor.create_model(Rating)
    try:
        for trigger in Rating._meta.triggers:
            trigger.install(Rating)
        Rating.objects.bulk_create([Rating(post=post, voter=v, stars=1) for v in (1, 2)])
        made = events_after(lambda: Rating.objects.filter(voter=2).update(stars=5))
        assert made == {("test_rating_changed", "UPDATE"): 1}
        event = EventRecord.objects.get(channel="test_rating_changed", operation="UPDATE")
        assert (event.old["stars"], event.new["stars"], event.new["voter"]) == (1, 5, 2)
        assert event.key == str(post.pk)
        with pytest.raises(NotSupportedError, match=r"changed the primary key \(post_id, voter\)"):
            Rating.objects.filter(voter=2).update(voter=3)
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Rating)


@needs_composite_pk
@isolate_apps("blog")
def test_the_system_check_names_a_key_that_has_no_single_column() -> None:
    class Vote(models.Model):
        pk = models.CompositePrimaryKey("post", "voter")
        post = models.ForeignKey(Post, on_delete=models.CASCADE)
        voter = models.IntegerField()

        class Meta:
            app_label = "blog"
            triggers = rating_by_pk.triggers()

    (error,) = channel_trigger_errors([Vote])
    assert error.id == "eventbus.E010"
    assert error.msg == (
        "channel test_rating_by_pk on blog.Vote: key 'pk' has no single column (a composite "
        "primary key or a many-to-many field); name one concrete field"
    )
