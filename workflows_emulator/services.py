"""The engine's links to the outside world: HTTP, sleeping and the clock.

They are injectable (``ExecutionContext.services``) so tests run retries and backoffs
deterministically, without real sleeps or sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import requests


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    query: Sequence[tuple[str, str]]
    body: bytes | None
    timeout: float


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportTimeoutError(Exception):
    """The request did not complete within its timeout."""


class TransportConnectionFailedError(Exception):
    """No connection could be established (refused, unknown host...)."""


class TransportConnectionBrokenError(Exception):
    """The connection broke after it was established."""


def requests_transport(request: HttpRequest) -> HttpResponse:
    """Send a request with ``requests``, mapping its failures to the transport errors."""
    try:
        response = requests.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            params=list(request.query),
            data=request.body,
            timeout=request.timeout,
            allow_redirects=True,
        )
    except requests.Timeout as error:
        raise TransportTimeoutError(str(error)) from error
    except requests.ConnectionError as error:
        # requests reports refused connections and dropped ones alike; a failure before
        # any byte of the response arrived is the common case of both.
        raise TransportConnectionFailedError(str(error)) from error
    except requests.RequestException as error:
        raise TransportConnectionBrokenError(str(error)) from error
    return HttpResponse(response.status_code, dict(response.headers), response.content)


def interruptible_sleep(seconds: float, cancel_event: threading.Event) -> None:
    """Sleep, waking at once when the execution is cancelled."""
    cancel_event.wait(max(0.0, seconds))


@dataclass(frozen=True)
class Services:
    transport: Callable[[HttpRequest], HttpResponse] = field(default=requests_transport)
    sleep: Callable[[float, threading.Event], None] = field(default=interruptible_sleep)
    now: Callable[[], float] = field(default=time.time)
