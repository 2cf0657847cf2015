"""Celery tasks of the push proxy: the monitor's commands and push delivery.

`watch`, `stop` and `drain` go to one monitor's own queue (idle.<worker-id>, chosen by the
service per call) and return within milliseconds or a login's time: sessions live in the
monitor's manager, never in a task. `deliver_push` runs on ordinary workers (queue `push`).
"""

from __future__ import annotations

from typing import Any

from celery import current_app, shared_task


@shared_task(
    name="pushproxy.watch",
    # Never redelivered: the sealed password expires in 30 s and a second login would
    # only race the first (specs/push-proxy.md).
    acks_late=False,
    soft_time_limit=40,
    time_limit=50,
)
def watch(**kwargs: Any) -> dict[str, str]:
    from pushproxy.services import watching  # services import this module (enqueueing)

    return watching.watch(**kwargs).as_dict()


@shared_task(name="pushproxy.stop", acks_late=False, soft_time_limit=20, time_limit=30)
def stop(*, subscription: str) -> bool:
    from pushproxy.services import watching  # services import this module

    return watching.stop(subscription=subscription)


@shared_task(name="pushproxy.drain", acks_late=False, soft_time_limit=30, time_limit=40)
def drain(*, notify: bool = False, reopen: bool = True) -> int:
    from pushproxy.services import watching  # services import this module

    return watching.drain(notify=notify, reopen=reopen)


@shared_task(name="pushproxy.expire_pending", ignore_result=True)
def expire_pending() -> int:
    """Every 30 s (CELERY_BEAT_SCHEDULE): subscriptions.expire_pending."""
    from pushproxy.services import subscriptions  # services import this module

    return subscriptions.expire_pending()


@shared_task(name="pushproxy.reap_monitors", ignore_result=True, expires=30)
def reap_monitors() -> dict[str, int]:
    """Every PUSHPROXY_REAP_SECONDS (CELERY_BEAT_SCHEDULE): monitors.reap."""
    from pushproxy.services import monitors  # services import this module

    return monitors.reap()


@shared_task(
    bind=True,
    name="pushproxy.deliver_push",
    # Transient trouble only (network, 5xx): exponential backoff with jitter, 2 s up to
    # 5 min between tries, 8 tries (about 10 minutes); 429 retries after its Retry-After.
    max_retries=8,
    acks_late=True,
    # Nobody reads a push's result (a sent push is recorded on the subscription, a refused
    # one logged). Kept, every push was a GET + SET + PUBLISH in Redis, and its sender (a
    # session greenlet of the monitor) subscribed to the result's channel, never to read it.
    ignore_result=True,
    soft_time_limit=45,
    time_limit=60,
)
def deliver_push(self: Any, /, **kwargs: Any) -> str:
    from pushproxy.services import delivery  # services import this module

    try:
        return delivery.deliver(**kwargs)
    except delivery.RetryLater as later:
        raise self.retry(countdown=later.seconds) from None
    except delivery.TransientPushError as exc:
        raise self.retry(countdown=backoff(self.request.retries), exc=exc) from None


def dispatch(task: Any, *, kwargs: dict[str, Any], **options: Any) -> Any:
    """`task.apply_async`, or `task.apply` in this process without Redis (eager mode).

    Celery's eager apply_async sets a process-global flag around the call and restores it
    afterwards, without a lock (`denied_join_result`); pushes sent from session threads at
    the same time as a request's own task left it stuck on, and every later `result.get()`
    in the process was refused. `apply` runs the task the same way without touching it.
    """
    if current_app.conf.task_always_eager:
        return task.apply(kwargs=kwargs, task_id=options.get("task_id"))
    return task.apply_async(kwargs=kwargs, **options)


def backoff(retries: int) -> float:
    """2, 4, 8, ... seconds up to 300, with up to 50% random jitter added."""
    import random

    base: float = min(300.0, 2.0 * (2**retries))
    return base + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret
