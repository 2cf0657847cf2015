"""QR onboarding formats: DCACCOUNT and DCLOGIN texts and their QR images (specs/qr.md).

Pure: data in, text or bytes out; no model is imported. Delta Chat's own parser
(chatmail/core `src/qr.rs`, `src/qr/dclogin_scheme.rs`) is the reference, and the tests run
it (`deltachat-rpc-server`'s check_qr) on what this module writes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import qrcode
import qrcode.constants

from providers import durations
from providers.autoconfig import Server, expand_username

DCACCOUNT_PATH = "/dcaccount/"
# specs/qr.md: socketType -> the DCLOGIN security value.
_SECURITY = {"SSL": "ssl", "STARTTLS": "starttls", "plain": "plain"}
# The authentication of autoconfig (providers/autoconfig.py) a DCLOGIN code can use: the
# password in clear over the connection's TLS (Delta Chat logs in with IMAP LOGIN and SMTP
# AUTH PLAIN/LOGIN; it has no challenge-response "password-encrypted", and the code carries
# nothing for OAuth2, certificates or client addresses).
PASSWORD_AUTH = frozenset({"password-cleartext"})
# Error correction M (15 %) and the 4-module quiet zone the QR standard asks for.
ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M
QUIET_ZONE = 4


class QRFormatError(ValueError):
    """A code that cannot be written (http origin, no IMAP server, ...); says why."""


def dcaccount_url(base_url: str, token: str) -> str:
    """The URL Delta Chat POSTs to: `<https origin>/dcaccount/<token>`."""
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.netloc:
        raise QRFormatError(
            f"DCACCOUNT codes need an https PORTAL_BASE_URL (it is {base_url!r}): Delta Chat "
            "takes 'DCACCOUNT:http://…' for a domain name and cannot use the code. Set "
            "PORTAL_BASE_URL to the portal's public https origin."
        )
    if not token or any(char in token for char in "/?#%") or not token.isascii():
        raise QRFormatError("The token must be URL-safe text.")
    return f"{base_url.rstrip('/')}{DCACCOUNT_PATH}{token}"


def dcaccount_text(base_url: str, token: str) -> str:
    """`DCACCOUNT:https://<portal>/dcaccount/<token>`; QRFormatError unless https."""
    return f"DCACCOUNT:{dcaccount_url(base_url, token)}"


def dcaccount_answer(*, address: str, password: str, lifetime: timedelta | None) -> dict[str, Any]:
    """The JSON of a DCACCOUNT success: `email` and `password` (what Delta Chat reads), and
    mailadm's `expiry` (the accounts' lifetime as written in admin) and `ttl` (in seconds,
    null for permanent accounts)."""
    return {
        "email": address,
        "password": password,
        "expiry": durations.format_duration(lifetime),
        "ttl": int(lifetime.total_seconds()) if lifetime else None,
    }


def dcaccount_refusal(*, code: str, reason: str) -> dict[str, str]:
    """The JSON of a DCACCOUNT refusal: `reason`, which Delta Chat shows to the person (never
    empty, specs/qr.md), and our `code` for the administrator."""
    if not reason.strip():
        raise ValueError("A DCACCOUNT refusal needs a reason to show.")
    return {"reason": reason, "code": code}


def _value(text: str) -> str:
    # Query values are form-urlencoded on the reading side ("+" is a space there): encode
    # every reserved character, so "+", "&", "%", "#" and spaces survive.
    return quote(text, safe="")


def dclogin_text(
    *,
    address: str,
    password: str,
    imap: Server,
    smtp: Server,
    certificate_checks: int | None = None,
) -> str:
    """`dclogin:<address>?v=1&p=…&ih=…` with every IMAP and SMTP key (specs/qr.md).

    All server keys are emitted because the client skips autoconfig as soon as one is
    present; so non-standard ports and hosts work. The address keeps `@` and ordinary
    characters literal (older clients do not decode it); everything else is percent-encoded.
    `certificate_checks`: None (leave out), 0 automatic, 1 strict, 2/3 accept invalid.
    QRFormatError for a server the scheme cannot describe.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise QRFormatError(f"{address!r} is not a mail address.")
    if not password:
        raise QRFormatError("A DCLOGIN code needs the password.")
    if imap.type != "imap":
        raise QRFormatError("DCLOGIN describes an IMAP server; this provider offers none.")
    if smtp.type != "smtp":
        raise QRFormatError("DCLOGIN needs the provider's SMTP server.")
    if certificate_checks not in (None, 0, 1, 2, 3):
        raise QRFormatError("certificate_checks is 0, 1, 2 or 3.")
    pairs: list[tuple[str, str]] = [("v", "1"), ("p", password)]
    for prefix, server in (("i", imap), ("s", smtp)):
        if server.socket_type not in _SECURITY:
            raise QRFormatError(f"Unknown connection security {server.socket_type!r}.")
        pairs += [
            (f"{prefix}h", server.hostname),
            (f"{prefix}p", str(server.port)),
            (f"{prefix}s", _SECURITY[server.socket_type]),
            (f"{prefix}u", expand_username(server.username, address)),
        ]
    if certificate_checks is not None:
        pairs.append(("ic", str(certificate_checks)))
    address_part = quote(address, safe="@.!$'*+-=^_`{|}~")
    query = "&".join(f"{key}={_value(value)}" for key, value in pairs)
    return f"dclogin:{address_part}?{query}"


def first_servers(servers: Iterable[Server]) -> tuple[Server, Server]:
    """The first IMAP and the first SMTP server (preference order) that take the account's
    password: a DCLOGIN code carries only the password, so a server that wants OAuth2, a
    client certificate or the client's address cannot log the account in.

    QRFormatError, saying which is missing, if there is no such IMAP or SMTP server.
    """
    listed = list(servers)
    found = []
    for kind in ("imap", "smtp"):
        of_kind = [server for server in listed if server.type == kind]
        usable = [server for server in of_kind if server.authentication in PASSWORD_AUTH]
        if not usable:
            name = kind.upper()
            raise QRFormatError(
                f"The provider has no {name} server that takes a password (its {name} "
                f"servers use {', '.join(sorted({s.authentication for s in of_kind}))}); a "
                "DCLOGIN code logs in with the password only."
                if of_kind
                else f"The provider has no {name} server; Delta Chat needs one."
            )
        found.append(usable[0])
    return found[0], found[1]


def matrix(text: str) -> list[list[bool]]:
    """The QR modules of `text` (error correction M), quiet zone included."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECTION, border=QUIET_ZONE)
    code.add_data(text)
    code.make(fit=True)
    modules: list[list[bool]] = code.get_matrix()
    return modules


def svg(text: str) -> bytes:
    """The code as a standalone SVG (one path, scalable: crisp in print)."""
    return svg_from_matrix(matrix(text))


def runs(modules: list[list[bool]]) -> Iterator[tuple[int, int, int]]:
    """The dark modules as horizontal runs: (row, first column, length)."""
    size = len(modules)
    for y, row in enumerate(modules):
        x = 0
        while x < size:
            if not row[x]:
                x += 1
                continue
            start = x
            while x < size and row[x]:
                x += 1
            yield y, start, x - start


def svg_from_matrix(modules: list[list[bool]]) -> bytes:
    """One <path> of horizontal runs, viewBox in modules.

    Built from the matrix rather than by qrcode's SVG factory so that a sheet computes each
    code's matrix once for both its SVG and its PDF drawing (docs/benchmarks.md).
    """
    size = len(modules)
    path = "".join(f"M{x} {y}h{length}v1h{-length}z" for y, x, length in runs(modules))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
        f'width="{size * 4}" height="{size * 4}" shape-rendering="crispEdges">'
        f'<rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path fill="#000" d="{path}"/></svg>\n'
    ).encode()


def png(text: str, *, module_pixels: int = 8) -> bytes:
    """The code as a PNG for screens (`module_pixels` per module)."""
    code = qrcode.QRCode(
        error_correction=ERROR_CORRECTION, border=QUIET_ZONE, box_size=module_pixels
    )
    code.add_data(text)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image().save(buffer, format="PNG")
    return buffer.getvalue()
