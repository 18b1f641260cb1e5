"""The reference site's handlers, one module per concern. Importing registers them."""

from listeners import callbacks, comments, digest, posts, taxonomy

__all__ = ["callbacks", "comments", "digest", "posts", "taxonomy"]
