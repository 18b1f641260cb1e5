"""A second project app whose table lives in a second database (the specs of
tests/test_databases.py): page views, written to the "other" alias, with a channel there."""
