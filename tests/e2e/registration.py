"""What the registration pages' end-to-end tests share: logging in to the real Dovecot."""

from __future__ import annotations

from imapclient import IMAPClient

from accounts.dovecot import LOOPBACK, PrivateDovecot


def imap_logs_in(dovecot: PrivateDovecot, username: str, password: str) -> bool:
    """Whether Dovecot lets `username` in over IMAP with `password`."""
    client = IMAPClient(LOOPBACK, port=dovecot.port, ssl=False, timeout=15)
    try:
        client.plain_login(username, password)
        return True
    except Exception:
        return False
    finally:
        client.logout()
