from django.db import models

from tests.analytics.channels import page_viewed


class PageView(models.Model):
    path = models.CharField(max_length=200)
    counted = models.BooleanField(default=False)

    class Meta:
        triggers = page_viewed.triggers()
