"""The reference site's handlers, one module per concern. Importing registers them."""

from listeners import comments, posts, taxonomy

__all__ = ["comments", "posts", "taxonomy"]
