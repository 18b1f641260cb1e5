"""The reference site's handlers, one module per concern. Importing registers them."""

from listeners import callbacks, comments, posts, taxonomy

__all__ = ["callbacks", "comments", "posts", "taxonomy"]
