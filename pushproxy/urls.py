"""URLs of the push proxy API, mounted under /api/v1/ by portal.urls."""

from __future__ import annotations

from django.urls import path

from pushproxy import api

urlpatterns = [
    path("push/subscriptions", api.SubscriptionsView.as_view(), name="push-subscriptions"),
    path(
        "push/subscriptions/<str:public_id>",
        api.SubscriptionView.as_view(),
        name="push-subscription",
    ),
]
