"""The push subscription API is in the OpenAPI schema, with every documented answer."""

from __future__ import annotations

from django.test import Client


def test_schema_describes_the_push_subscription_endpoints(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    create = schema["paths"]["/api/v1/push/subscriptions"]["post"]
    one = schema["paths"]["/api/v1/push/subscriptions/{public_id}"]
    assert {"201", "202", "400", "401", "409", "422", "429", "502", "503"} <= set(
        create["responses"]
    )
    assert {"get", "delete"} <= set(one)
    assert "204" in one["delete"]["responses"] and "404" in one["get"]["responses"]
    imap = schema["components"]["schemas"]["ImapIn"]["properties"]
    assert imap["password"]["writeOnly"] is True
    assert set(schema["components"]["schemas"]["SubscriptionCreateIn"]["required"]) == {
        "imap",
        "endpoints",
        "clientId",
    }
