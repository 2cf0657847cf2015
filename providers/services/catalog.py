"""Providers as configuration: import and export the JSON catalog of specs/provider-config.md."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, models, transaction

from portal.errors import PortalError
from providers.models import (
    INCOMING_TYPES,
    MISSING_PART_MESSAGES,
    Provider,
    ProviderDomain,
    ServerSetting,
    ServerType,
    SuggestionClient,
)


class CatalogError(PortalError):
    """A catalog that cannot be imported; the message names the provider and the JSON field."""

    code = "catalog_invalid"
    default_message = "The provider catalog is not valid."


@dataclass(frozen=True)
class ImportResult:
    """How many providers an import created, updated or left as they were."""

    created: int
    updated: int
    unchanged: int
    suggestion_clients_added: int
    suggestion_clients_removed: int


class _WrongType(Exception):
    """A JSON value of the wrong type; the model never sees it."""


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _WrongType("Expected a string.")
    return value


def _string_or_null(value: Any) -> str:
    return "" if value is None else _string(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("Expected true or false.")
    return value


def _whole_number(value: Any) -> int:
    # bool is an int in Python, but `"port": true` is a mistake, not port 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _WrongType("Expected a whole number.")
    return value


def _whole_number_or_null(value: Any) -> int | None:
    return None if value is None else _whole_number(value)


def _seconds_or_null(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("Expected a number of seconds.")
    return float(value)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _WrongType("Expected a list of strings.")
    return value


def _objects(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _WrongType("Expected a list of objects.")
    return value


def _comma_separated(value: Any) -> str:
    return ",".join(_strings(value))


def _price(value: Any) -> Decimal:
    if value == "free":
        return Decimal(0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Through str() so that 4.99 stays 4.99 instead of its binary approximation.
        return Decimal(str(value))
    raise _WrongType('Expected "free" or the price per year as a number.')


# JSON key -> (model field, loader). Keys missing from an entry take the model's default.
_PROVIDER_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "slug": ("slug", _string),
    "name": ("name", _string),
    "shortName": ("short_name", _string),
    "hosted": ("hosted", _boolean),
    "enabled": ("enabled", _boolean),
    "registration": ("registration", _string),
    "registrationUrl": ("registration_url", _string_or_null),
    "suggestionUrl": ("suggestion_url", _string_or_null),
    "languages": ("languages", _comma_separated),
    "countries": ("countries", _comma_separated),
    "homepage": ("homepage", _string),
    "tosUrl": ("tos_url", _string),
    "privacyUrl": ("privacy_url", _string),
    "price": ("price", _price),
    "quotaMB": ("quota_mb", _whole_number),
    # Extensions of specs/provider-config.md: rules for new accounts, exported when not default.
    "usernameMinLength": ("username_min_length", _whole_number),
    "usernameMaxLength": ("username_max_length", _whole_number),
    "usernamePunctuation": ("username_punctuation", _string),
    "passwordMinLength": ("password_min_length", _whole_number),
    "requireVerifiedEmail": ("require_verified_email", _boolean),
    # Extensions: suggestions (null or left out: the server's default).
    "suggestionTimeout": ("suggestion_timeout", _seconds_or_null),
    "suggestionCount": ("suggestion_count", _whole_number_or_null),
    "requireApproval": ("require_approval", _boolean),
    # Extensions: the registration pages' look and their answer to "cancel" (the logo is
    # uploaded in admin: images stay out of the catalog).
    "accentColor": ("accent_color", _string),
    "cancelAnswer": ("cancel_answer", _string),
}
_NON_DEFAULT_KEYS = (
    "usernameMinLength",
    "usernameMaxLength",
    "usernamePunctuation",
    "passwordMinLength",
    "requireVerifiedEmail",
    "suggestionTimeout",
    "suggestionCount",
    "requireApproval",
    "accentColor",
    "cancelAnswer",
)
_SERVER_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "type": ("type", _string),
    "hostname": ("hostname", _string),
    "port": ("port", _whole_number),
    "socketType": ("socket_type", _string),
    "authentication": ("authentication", _string),
    "username": ("username", _string),
}
_PROVIDER_JSON_KEYS = {name: key for key, (name, _) in _PROVIDER_KEYS.items()}
_SERVER_JSON_KEYS = {name: key for key, (name, _) in _SERVER_KEYS.items()}
_PROVIDER_LISTS = ("domains", "incoming", "outgoing", "suggestionClients")
_REQUIRED = ("slug", "name", "domains")
_REQUIRED_WHEN_HOSTED = ("incoming", "outgoing")
_TOP_LEVEL = ("providers", "suggestionClients")
# Comma-separated fields whose list is compared, so "en, de" typed in admin equals ["en","de"].
_LIST_PROPERTIES = {"languages": "language_list", "countries": "country_list"}


@dataclass
class _Plan:
    """What importing one provider writes, worked out (and validated) before any write."""

    provider: Provider
    created: bool
    changed_fields: list[str] = field(default_factory=list)
    saves: list[tuple[models.Model, list[str] | None]] = field(default_factory=list)
    deletes: list[models.Model] = field(default_factory=list)
    lost_domains: int = 0
    clients_added: int = 0
    clients_removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.created or self.changed_fields or self.saves or self.deletes or self.lost_domains
        )


def load_catalog_file(path: Path | str) -> dict[str, Any]:
    """Read a catalog file; CatalogError (catalog_invalid) if unreadable or not a JSON object."""

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json would silently keep the last of two equal keys, hiding a mistake in the file.
        keys = [key for key, _ in pairs]
        if duplicates := sorted({key for key in keys if keys.count(key) > 1}):
            raise CatalogError(f"{path}: the key {duplicates[0]!r} appears twice in one object.")
        return dict(pairs)

    def reject_constant(name: str) -> Any:
        raise CatalogError(f"{path}: {name} is not a number this catalog accepts.")

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read the file ({exc}).") from exc
    try:
        data = json.loads(text, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from exc
    if not isinstance(data, dict):
        raise CatalogError(f'{path}: expected a JSON object with a "providers" list.')
    return data


def import_providers(*, data: dict[str, Any]) -> ImportResult:
    """Create or update the providers of a catalog, all or nothing.

    `data` is the parsed JSON of specs/provider-config.md (see `load_catalog_file`).
    Providers are matched by slug: missing ones are created, present ones updated. A
    provider's domains and servers become exactly those of the file, in file order (the
    first domain is the primary one); keys left out take the model's default. Providers
    that are not in the file are left alone. Domains may be given as U-labels or A-labels.
    The top-level `suggestionClients` list becomes exactly the global allow-list, and a
    provider's own `suggestionClients` list exactly its provider-specific rows; a list that
    is left out leaves those rows alone.

    Idempotent: rows whose values already match are not written (their ids and
    `updated_at` stay), and such providers count as unchanged. Domains are matched by name
    (and may move between providers of the file), servers by their place in the incoming
    or outgoing list. Positions are numbered 0, 1, 2... whenever rows are added or
    reordered; a list already in file order keeps its numbers, so importing an export of
    data edited in admin changes nothing.

    Raises CatalogError (code catalog_invalid) naming every wrong provider and JSON field;
    then nothing is written. Side effects: Provider, ProviderDomain, ServerSetting and
    SuggestionClient rows, saved one by one so that the post_save signals invalidate the
    served autoconfig documents (providers/apps.py).
    """
    try:
        with transaction.atomic():
            importer = _Importer()
            plans = importer.plan(data)
            if importer.errors:
                raise CatalogError("\n".join(importer.errors))
            _write(plans, importer.global_added, importer.global_removed)
    except IntegrityError as exc:
        # Validation ran against the rows as they were; only a concurrent edit gets here.
        raise CatalogError(
            f"The catalog conflicts with a change made meanwhile; nothing was imported ({exc})."
        ) from exc
    return _result(plans, importer)


def _result(plans: Sequence[_Plan], importer: _Importer) -> ImportResult:
    created = sum(plan.created for plan in plans)
    updated = sum(plan.changed and not plan.created for plan in plans)
    return ImportResult(
        created=created,
        updated=updated,
        unchanged=len(plans) - created - updated,
        suggestion_clients_added=len(importer.global_added)
        + sum(plan.clients_added for plan in plans),
        suggestion_clients_removed=len(importer.global_removed)
        + sum(plan.clients_removed for plan in plans),
    )


def export_providers() -> dict[str, Any]:
    """Every provider (ordered by slug) and the global suggestion clients, as a catalog.

    The inverse of `import_providers`: importing the result reproduces the same rows and
    reports every provider unchanged. Domains and host names are written as the stored
    A-labels (xn--...), which are ASCII and stable; admin shows them readable. `enabled` is
    written only when false and a provider's `suggestionClients` only when it has some.
    """
    providers = Provider.objects.order_by("slug").prefetch_related(
        "domains", "servers", "suggestion_clients"
    )
    global_clients = SuggestionClient.objects.filter(provider__isnull=True).order_by("network")
    return {
        "providers": [_provider_to_json(provider) for provider in providers],
        "suggestionClients": [client.network for client in global_clients],
    }


def _provider_to_json(provider: Provider) -> dict[str, Any]:
    servers = list(provider.servers.all())
    entry: dict[str, Any] = {
        "slug": provider.slug,
        "name": provider.name,
        "shortName": provider.short_name,
        "domains": [domain.name for domain in provider.domains.all()],
        "hosted": provider.hosted,
    }
    if not provider.enabled:
        entry["enabled"] = False
    price = provider.price
    entry |= {
        "registration": provider.registration,
        "registrationUrl": provider.registration_url or None,
        "suggestionUrl": provider.suggestion_url or None,
        "languages": provider.language_list,
        "countries": provider.country_list,
        "homepage": provider.homepage,
        "tosUrl": provider.tos_url,
        "privacyUrl": provider.privacy_url,
        "price": "free" if price == 0 else int(price) if price == int(price) else float(price),
        "quotaMB": provider.quota_mb,
        "incoming": [_server_to_json(server) for server in servers if server.is_incoming],
        "outgoing": [_server_to_json(server) for server in servers if not server.is_incoming],
    }
    for key in _NON_DEFAULT_KEYS:
        name = _PROVIDER_KEYS[key][0]
        if getattr(provider, name) != _model_field(Provider, name).get_default():
            entry[key] = getattr(provider, name)
    if clients := [client.network for client in provider.suggestion_clients.all()]:
        entry["suggestionClients"] = clients
    return entry


def _server_to_json(server: ServerSetting) -> dict[str, Any]:
    return {key: getattr(server, name) for key, (name, _) in _SERVER_KEYS.items()}


def _write(
    plans: Sequence[_Plan],
    global_added: Sequence[SuggestionClient],
    global_removed: Sequence[SuggestionClient],
) -> None:
    # Providers first: new domains and servers need their id.
    for plan in plans:
        if plan.created:
            plan.provider.save()
        elif plan.changed:
            plan.provider.save(update_fields=[*plan.changed_fields, "updated_at"])
    # One DELETE per table (its post_delete signals still fire row by row).
    deletes: dict[type[models.Model], list[int]] = {}
    for row in [*global_removed, *(row for plan in plans for row in plan.deletes)]:
        deletes.setdefault(type(row), []).append(row.pk)
    for model, ids in deletes.items():
        model._default_manager.filter(pk__in=ids).delete()
    # Row by row rather than bulk_create/bulk_update: post_save invalidates the served
    # documents, and a catalog holds tens of rows, not thousands.
    for plan in plans:
        for row, update_fields in plan.saves:
            row.save(update_fields=update_fields)
    for client in global_added:
        client.save()


def _model_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    model_field = model._meta.get_field(name)
    if not isinstance(model_field, models.Field):
        raise TypeError(f"{model.__name__}.{name} is not a concrete field")
    return model_field


def _before(row: models.Model, names: Sequence[str]) -> dict[str, Any]:
    """The current values of `names` (by attname, so a foreign key compares by id)."""
    return {name: getattr(row, _model_field(type(row), name).attname) for name in names}


def _changed(row: models.Model, before: dict[str, Any]) -> list[str]:
    after = _before(row, list(before))
    return [name for name, value in before.items() if after[name] != value]


def _renumber(rows: Sequence[ProviderDomain | ServerSetting], old_order: list[int]) -> None:
    """Number rows 0, 1, 2... in file order, unless they are old rows still in the old order.

    `old_order` holds the ids of the provider's old rows that the file keeps, ordered as
    they are stored (position, id); new rows have no id, so adding one renumbers.
    """
    if [row.pk for row in rows] != old_order:
        for index, row in enumerate(rows):
            row.position = index


def _json_path(path: str, name: str, keys: Mapping[str, str] | None) -> str:
    """Where a model field's error points in the file: `incoming[1].port`, `shortName`."""
    if keys is None or name == NON_FIELD_ERRORS:
        return path
    key = keys.get(name, name)
    return f"{path}.{key}" if path else key


class _Importer:
    """Checks a whole catalog against the models and the database and plans the writes.

    Nothing is written here. Every error is collected, each prefixed with where it is.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.existing: dict[str, Provider] = {}
        # Domain rows of the file's providers by name; and where the file lists each name.
        self.domain_rows: dict[str, ProviderDomain] = {}
        self.domain_listed_at: dict[str, str] = {}
        self.slug_listed_at: dict[str, str] = {}
        self.global_added: list[SuggestionClient] = []
        self.global_removed: list[SuggestionClient] = []

    def fail(self, where: str, path: str, message: str) -> None:
        self.errors.append(": ".join(part for part in (where, path, message) if part))

    def fail_validation(
        self,
        where: str,
        exc: ValidationError,
        path: str,
        keys: Mapping[str, str] | None = None,
    ) -> None:
        # A field's own clean() raises a plain list; a model's full_clean() a dict by field.
        errors = (
            exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
        )
        for name, messages in errors.items():
            for message in messages:
                self.fail(where, _json_path(path, name, keys), message)

    def plan(self, data: Any) -> list[_Plan]:
        if not isinstance(data, dict):
            self.fail("", "", 'Expected a JSON object with a "providers" list.')
            return []
        for key in data:
            if key not in _TOP_LEVEL:
                self.fail("", key, "Unknown key.")
        if "providers" not in data:
            self.fail("", "providers", "Required key is missing.")
            return []
        try:
            entries = _objects(data["providers"])
        except _WrongType as exc:
            self.fail("", "providers", str(exc))
            return []
        slugs = [entry["slug"] for entry in entries if isinstance(entry.get("slug"), str)]
        # One query per table for all the file's providers. The row lock (PostgreSQL) keeps
        # an admin edit from slipping in between this validation and the writes.
        self.existing = {
            provider.slug: provider
            for provider in Provider.objects.select_for_update()
            .filter(slug__in=slugs)
            .prefetch_related("domains", "servers", "suggestion_clients")
        }
        self.domain_rows = {
            domain.name: domain
            for provider in self.existing.values()
            for domain in provider.domains.all()
        }
        plans = [
            plan
            for index, entry in enumerate(entries)
            if (plan := self.plan_provider(index, entry)) is not None
        ]
        # Only now is it known whether a domain left out by one provider moved to another.
        for plan in plans:
            for domain in [] if plan.created else plan.provider.domains.all():
                if domain.name not in self.domain_listed_at:
                    plan.deletes.append(domain)
                elif domain.provider_id != plan.provider.pk:
                    plan.lost_domains += 1
        if "suggestionClients" in data:
            old = list(SuggestionClient.objects.filter(provider__isnull=True))
            self.global_added, self.global_removed = self.plan_clients(
                "", data["suggestionClients"], old, None
            )
        return plans

    def plan_provider(self, index: int, entry: dict[str, Any]) -> _Plan | None:
        slug = entry.get("slug")
        where = f"providers[{index}]"
        if isinstance(slug, str) and slug:
            where += f" ({slug})"
        for key in entry:
            if key not in _PROVIDER_KEYS and key not in _PROVIDER_LISTS:
                self.fail(where, key, "Unknown key.")
        hosted = entry.get("hosted", True) is True
        for key in (*_REQUIRED, *(_REQUIRED_WHEN_HOSTED if hosted else ())):
            if key not in entry:
                self.fail(where, key, "Required key is missing.")
        if isinstance(slug, str):
            if slug in self.slug_listed_at:
                self.fail(
                    where, "slug", f"{slug} is listed already, as {self.slug_listed_at[slug]}."
                )
                return None
            self.slug_listed_at[slug] = f"providers[{index}]"
        existing = self.existing.get(slug) if isinstance(slug, str) else None
        plan = _Plan(provider=existing or Provider(), created=existing is None)

        values: dict[str, Any] = {}
        for key, (name, load) in _PROVIDER_KEYS.items():
            try:
                values[name] = (
                    load(entry[key]) if key in entry else _model_field(Provider, name).get_default()
                )
            except _WrongType as exc:
                self.fail(where, key, str(exc))
        if len(values) == len(_PROVIDER_KEYS):
            self.plan_fields(where, plan, values)
        required = Provider(hosted=hosted).required_parts()
        self.plan_domains(where, plan, entry.get("domains", []), need_one="domains" in entry)
        for key in ("incoming", "outgoing"):
            self.plan_servers(
                where, plan, key, entry.get(key, []), need_one=key in required and key in entry
            )
        if "suggestionClients" in entry:
            old = [] if plan.created else list(plan.provider.suggestion_clients.all())
            added, removed = self.plan_clients(
                where, entry["suggestionClients"], old, plan.provider
            )
            plan.saves += [(row, None) for row in added]
            plan.deletes += removed
            plan.clients_added, plan.clients_removed = len(added), len(removed)
        return plan

    def plan_fields(self, where: str, plan: _Plan, values: dict[str, Any]) -> None:
        provider = plan.provider
        before = _before(provider, list(values))
        for name, value in values.items():
            listed = _LIST_PROPERTIES.get(name)
            if listed and not plan.created and getattr(provider, listed) == value.split(","):
                continue  # same list, perhaps spelt "en, de": not a change
            setattr(provider, name, value)
        try:
            provider.full_clean()
        except ValidationError as exc:
            self.fail_validation(where, exc, "", _PROVIDER_JSON_KEYS)
            return
        if not plan.created:
            plan.changed_fields = _changed(provider, before)

    def plan_domains(self, where: str, plan: _Plan, raw: Any, *, need_one: bool) -> None:
        try:
            given_names = _strings(raw)
        except _WrongType as exc:
            self.fail(where, "domains", str(exc))
            return
        if need_one and not given_names:
            self.fail(where, "domains", str(MISSING_PART_MESSAGES["domains"]))
        name_field = _model_field(ProviderDomain, "name")
        rows: list[tuple[ProviderDomain, dict[str, Any]]] = []
        for index, given in enumerate(given_names):
            path = f"domains[{index}]"
            try:
                name = name_field.clean(given, None)  # to the stored A-label form
            except ValidationError as exc:
                self.fail_validation(where, exc, path)
                continue
            if name in self.domain_listed_at:
                self.fail(
                    where, path, f"{given} is listed already, at {self.domain_listed_at[name]}."
                )
                continue
            self.domain_listed_at[name] = f"{where}: {path}"
            # Any row of a provider in this file is reused: a domain may move between them.
            row = self.domain_rows.get(name) or ProviderDomain(name=name)
            before = _before(row, ["provider", "position"])
            if row.provider_id is None or row.provider_id != plan.provider.pk:
                row.provider = plan.provider
            try:
                row.full_clean(exclude=["provider"])  # also: owned by a provider not in the file
            except ValidationError as exc:
                self.fail_validation(where, exc, path)
                continue
            rows.append((row, before))
        old = [] if plan.created else plan.provider.domains.all()
        kept = {row.pk for row, _ in rows}
        _renumber([row for row, _ in rows], [row.pk for row in old if row.pk in kept])
        self.add_saves(plan, rows)

    def plan_servers(self, where: str, plan: _Plan, key: str, raw: Any, *, need_one: bool) -> None:
        try:
            entries = _objects(raw)
        except _WrongType as exc:
            self.fail(where, key, str(exc))
            return
        if need_one and not entries:
            self.fail(where, key, str(MISSING_PART_MESSAGES[key]))
        incoming = key == "incoming"
        # Servers have no natural key: the n-th incoming server updates the n-th stored one.
        old = [
            server
            for server in ([] if plan.created else plan.provider.servers.all())
            if server.is_incoming == incoming
        ]
        rows: list[tuple[ServerSetting, dict[str, Any]]] = []
        for index, entry in enumerate(entries):
            path = f"{key}[{index}]"
            values = self.server_values(where, path, entry, incoming=incoming)
            if values is None:
                continue
            row = old[index] if index < len(old) else ServerSetting(provider=plan.provider)
            before = _before(row, [*values, "position"])
            for name, value in values.items():
                setattr(row, name, value)
            try:
                row.full_clean(exclude=["provider"])
            except ValidationError as exc:
                self.fail_validation(where, exc, path, _SERVER_JSON_KEYS)
                continue
            rows.append((row, before))
        plan.deletes += old[len(entries) :]
        _renumber([row for row, _ in rows], [row.pk for row in old[: len(entries)]])
        self.add_saves(plan, rows)

    def server_values(
        self, where: str, path: str, entry: dict[str, Any], *, incoming: bool
    ) -> dict[str, Any] | None:
        ok = True
        for key in entry:
            if key not in _SERVER_KEYS:
                self.fail(where, f"{path}.{key}", "Unknown key.")
                ok = False
        values: dict[str, Any] = {}
        for key, (name, load) in _SERVER_KEYS.items():
            try:
                values[name] = (
                    load(entry[key])
                    if key in entry
                    else _model_field(ServerSetting, name).get_default()
                )
            except _WrongType as exc:
                self.fail(where, f"{path}.{key}", str(exc))
                ok = False
        server_type = values.get("type")
        if server_type in ServerType.values and (server_type in INCOMING_TYPES) != incoming:
            self.fail(
                where,
                f"{path}.type",
                "Use imap or pop3: incoming servers are where mail is read."
                if incoming
                else "Use smtp: outgoing servers are where mail is sent.",
            )
            ok = False
        return values if ok else None

    def plan_clients(
        self,
        where: str,
        raw: Any,
        old: Sequence[SuggestionClient],
        provider: Provider | None,
    ) -> tuple[list[SuggestionClient], list[SuggestionClient]]:
        """The rows to add and to delete so that the allow-list is exactly `raw`."""
        try:
            networks = _strings(raw)
        except _WrongType as exc:
            self.fail(where, "suggestionClients", str(exc))
            return [], []
        old_by_network = {row.network: row for row in old}
        listed_at: dict[str, str] = {}
        added: list[SuggestionClient] = []
        for index, given in enumerate(networks):
            path = f"suggestionClients[{index}]"
            row = SuggestionClient(network=given, provider=provider)
            try:
                row.full_clean(exclude=["provider"])  # normalises: 127.0.0.1 -> 127.0.0.1/32
            except ValidationError as exc:
                self.fail_validation(where, exc, path)
                continue
            if row.network in listed_at:
                self.fail(where, path, f"{given} is listed already, at {listed_at[row.network]}.")
                continue
            listed_at[row.network] = path
            if row.network not in old_by_network:
                added.append(row)
        removed = [row for row in old if row.network not in listed_at]
        return added, removed

    @staticmethod
    def add_saves(plan: _Plan, rows: Sequence[tuple[models.Model, dict[str, Any]]]) -> None:
        for row, before in rows:
            if row.pk is None:
                plan.saves.append((row, None))
            elif changed := _changed(row, before):
                plan.saves.append((row, changed))
