"""The push subscription API is in the OpenAPI schema, with every documented answer."""

from __future__ import annotations

from django.test import Client

from pushproxy.services.subscriptions import LOGIN_ERRORS


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


def test_schema_names_every_login_error_code_under_its_status(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    responses = schema["paths"]["/api/v1/push/subscriptions"]["post"]["responses"]
    for code, (status, _message) in LOGIN_ERRORS.items():
        assert code in responses[str(int(status))]["description"], code
    assert "imap_host_busy" in responses["503"]["description"]
    assert "poll_cap_reached" in responses["503"]["description"]
    assert "imap_host_busy" not in responses["502"]["description"]
