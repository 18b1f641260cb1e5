"""The peers' side of `bench/peers.py`, imported inside each peer's own virtual environment.

Nothing here imports eventbus or Django: the Celery and procrastinate environments hold
only the peer, its driver and psycopg.
"""
