"""Channels on tables this app does not declare, through proxy models (pgtrigger's route).

CATALOG_ROUTE (environment) replays other wirings of the many-to-many channel:
``proxy`` (default) as the README says; ``register``, ``pgtrigger.register`` on the
auto-created through model, which no migration ever installs; ``removed``, no channel
trigger on it at all (the channel was removed from the code).
"""

from __future__ import annotations

import os

import pgtrigger
from django.contrib.auth.models import Group
from django.db import models

from eventbus import DELETE, INSERT, UPDATE, Channel

ROUTE = os.environ.get("CATALOG_ROUTE", "proxy")

product_tagged = Channel("product_tagged", operations=[INSERT, DELETE], key="product")
group_changed = Channel("group_changed", operations=[INSERT, UPDATE], key="name")


class Label(models.Model):
    name = models.CharField(max_length=50)


class Product(models.Model):
    name = models.CharField(max_length=50)
    labels = models.ManyToManyField(Label)  # an auto-created through table


if ROUTE == "proxy":

    class ProductLabelEvents(Product.labels.through):  # type: ignore[name-defined,misc]
        class Meta:
            proxy = True
            triggers = product_tagged.triggers()

elif ROUTE == "register":
    pgtrigger.register(*product_tagged.triggers())(Product.labels.through)


class GroupEvents(Group):
    class Meta:
        proxy = True
        triggers = group_changed.triggers()
