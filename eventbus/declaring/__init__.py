"""Declaring channels: what becomes an event, who handles it, and how it retries."""
