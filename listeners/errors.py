"""Errors handlers raise when an event cannot be carried out."""


class RowGone(LookupError):
    """The row an event needs was deleted before the event ran."""
