"""The reference site's channels: one declaration each.

Each is attached to its model through ``Meta.triggers`` (see ``blog/models.py``), so its
trigger is installed by a migration; its handler lives in ``listeners/``.
"""

from eventbus import DELETE, INSERT, UPDATE, Chain, Channel, RetryPolicy

comment_created = Channel("comment_created", operations=[INSERT], key="post")
# Post-processing writes only to the database: a batch can share one savepoint.
post_created = Channel("post_created", operations=[INSERT], key="id", isolation="batch")
# An edit of the body makes the word count stale; title-only edits make no event.
# Ordered by post: one post's edits are handled one at a time, in commit order.
post_edited = Channel("post_edited", operations=[UPDATE], key="id", changed=["body"], ordered=True)
post_tags_changed = Channel("post_tags_changed", operations=[INSERT, DELETE], key="post")
post_categories_changed = Channel(
    "post_categories_changed", operations=[INSERT, DELETE], key="post"
)
# Published from code when a post's processing ends (done or dead) and the post has a
# callback_url; its handler POSTs the outcome there, with retries like any event.
post_processing_finished = Channel("post_processing_finished", operations=(), key="post")
# A chain (listeners/digest.py): collect the newest posts, then email them; the web
# process starts it (POST /api/digests/) without importing the steps.
post_digest = Chain(
    "post_digest",
    steps=["collect_posts", "send_digest"],
    retry=RetryPolicy(max_attempts=5, base_delay=5),
)
