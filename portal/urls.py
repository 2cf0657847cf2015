"""Root URLs: mounts each app's URLs, the admin, the API schema and the health check."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from portal import views

admin.site.site_header = "mailportal"
admin.site.site_title = "mailportal admin"

urlpatterns = [
    path("", include("providers.urls")),
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("providers.api_urls")),
    path("api/v1/", include("pushproxy.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("healthz", views.healthz, name="healthz"),
]
