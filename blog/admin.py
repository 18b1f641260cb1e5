from django.contrib import admin

from blog.models import Category, Comment, Post, Tag


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "author", "created_at", "word_count", "processed_at")
    search_fields = ("title",)


@admin.register(Comment)
class CommentAdmin(admin.ModelAdmin):
    list_display = ("id", "post", "author", "created_at")


@admin.register(Tag, Category)
class TaxonomyAdmin(admin.ModelAdmin):
    list_display = ("name", "post_count")
    search_fields = ("name",)
