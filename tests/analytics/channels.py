"""The channel of the second database: its trigger and its events live in "other"."""

from eventbus import INSERT, Channel

page_viewed = Channel("page_viewed", operations=[INSERT], key="path", database="other")
