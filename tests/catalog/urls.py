"""The catalog project serves no pages."""

urlpatterns: list[object] = []
