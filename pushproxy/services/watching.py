"""The monitor's commands: log in and hand over (`watch`), log out (`stop`), all out (`drain`).

These run inside the process that holds the sessions (the `run_push_monitor` process, or
the web process without Redis), called by the tasks on its own queue. The password exists
here only between `unseal` and the login call.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from portal import netguard
from pushproxy import fleet, hostlimits, imap, monitor, sealing
from pushproxy.services import subscriptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # active, failed, gone
    code: str = ""
    mode: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "code": self.code, "mode": self.mode}


def watch(**kwargs: Any) -> Outcome:
    """`_watch` (below), then this greenlet's database connection is closed."""
    try:
        return _watch(**kwargs)
    finally:
        monitor.release_db()


def _watch(
    *,
    subscription: str,
    generation: int,
    host: str,
    port: int,
    security: str,
    mailbox: str,
    client_id: str,
    account_key: str,
    queue: str | None,
    sealed: str,
) -> Outcome:
    """Unseal, log in, EXAMINE, record the outcome, and let the manager watch the session.

    Every failure is recorded on the subscription (its code: imap_auth_failed,
    imap_unreachable, imap_tls_failed, mailbox_not_found, imap_error, egress_refused,
    superseded, too_many_subscriptions, imap_host_busy, poll_cap_reached,
    push_unavailable); nothing is retried: without the password there is nothing to retry
    with.
    """
    manager = monitor.get_manager()

    def failed(code: str) -> Outcome:
        subscriptions.record_failure(public_id=subscription, generation=generation, code=code)
        return Outcome("failed", code)

    try:
        username, password = sealing.unseal(
            sealed, context=subscriptions.seal_context(subscription, generation, queue)
        )
    except sealing.SealError as exc:
        logger.warning("watch %s: sealed credentials %s", subscription, exc.reason)
        return failed("push_unavailable")
    membership = fleet.member()
    if membership is not None:
        membership.confirm(account_key)  # a shard just handed to us is known before `check`
    try:
        manager.check(account_key=account_key, client_id=client_id, generation=generation)
    except monitor.Refusal as refusal:
        return failed(_refusal_code(refusal))

    target = imap.Mailbox(
        host=host, port=port, security=security, username=username, mailbox=mailbox
    )
    if target.account_key != account_key:
        return failed("imap_error")  # the key names a different account: never watch that
    timeout = settings.PUSHPROXY_LOGIN_TIMEOUT
    try:
        pause = hostlimits.take_login(host)  # the fleet's login pace for this IMAP host
    except hostlimits.HostBusy:
        return failed(hostlimits.HostBusy.code)
    if pause:
        time.sleep(pause)  # a greenlet in the monitor: the others go on

    def connect() -> socket.socket:
        return netguard.connect(
            host,
            port,
            allowed_ports=netguard.IMAP_PORTS,
            timeout=timeout,
            sources=fleet.source_addresses(),
        )

    try:
        session = imap.open_session(
            target, password, connect=connect, timeout=timeout, tag_prefix="P"
        )
    except imap.ImapFailure as failure:
        logger.info("watch %s: %s", subscription, failure.code)
        return failed(failure.code)
    except netguard.EgressRefused:
        return failed("egress_refused")
    except (netguard.UnresolvableHost, netguard.EgressError):
        return failed("imap_unreachable")
    finally:
        del password

    mode = "idle" if session.idle else "poll"
    recorded = subscriptions.record_active(
        public_id=subscription,
        generation=generation,
        account_key=account_key,
        client_id=client_id,
        mode=mode,
    )
    if recorded != "active":
        session.logout(2.0)
        return Outcome("gone" if recorded == "gone" else "failed", recorded)
    watched = monitor.Watched(
        subscription=subscription,
        generation=generation,
        account_key=account_key,
        client_id=client_id,
        session=session,
        host=host.lower(),
    )
    try:
        manager.adopt(watched)
    except monitor.Refusal as refusal:
        # Lost a race with another login of the slot after recording: undo, log out.
        session.logout(2.0)
        subscriptions.record_refused_after_login(
            public_id=subscription, generation=generation, code=_refusal_code(refusal)
        )
        return Outcome("failed", _refusal_code(refusal))
    logger.info("watch %s: %s session adopted", subscription, mode)
    return Outcome("active", mode=mode)


def _refusal_code(refusal: monitor.Refusal) -> str:
    if refusal.code in {"superseded", "too_many_subscriptions", "poll_cap_reached"}:
        return refusal.code
    return "push_unavailable"


def stop(*, subscription: str) -> bool:
    """Log the session out without a push; False if this process does not hold it."""
    return monitor.get_manager().stop(subscription, reason="deleted", wait=5.0)


def drain(*, notify: bool, reopen: bool = False) -> int:
    """Log every session of this process out (reconnect pushes if `notify`); the count.
    `reopen`: take new sessions again afterwards."""
    return monitor.get_manager().drain(reason="shutdown", notify=notify, wait=10.0, reopen=reopen)
