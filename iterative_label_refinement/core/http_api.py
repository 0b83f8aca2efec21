"""The small OpenAI-compatible HTTP client (stdlib only: retries with backoff, `Retry-After` honoured,
bad replies named) that the embedder's `api` backend and the LLM judges share, and the API's
settings from the environment."""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from iterative_label_refinement.core.settings import get_logger, load_env

logger = get_logger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class ApiError(RuntimeError):
    """An OpenAI-compatible API call that failed for good (after retries, or with a non-retryable status)."""


def api_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def bad_reply(url: str, problem: str, reply: object) -> ApiError:
    """The error for an HTTP 200 reply that cannot be used: the URL, the problem and what the server said."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    return ApiError(f"{url} answered HTTP 200 {problem}; the server said: {text[:300]}")


def post_json(
    base_url: str,
    path: str,
    body: dict[str, Any],
    api_key: str | None,
    *,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 120.0,
    max_wait_s: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST `body` to `<base_url>/<path>`; retry rate limits, server errors, network errors and non-JSON replies.

    The wait doubles after each failed try (from `backoff_s`, at most 60 s), unless the error reply
    carries `Retry-After`, whose wait is honoured. All waits together may take at most `max_wait_s`:
    a wait longer than what is left of it fails now, never retries early. A reply that is not a JSON
    object (e.g. a proxy's error page) is retried, then raised with the URL and what came back.
    """
    url = api_url(base_url, path)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode()
    attempt, waited = 0, 0.0
    while True:
        retry_after = None  # the wait the server asked for, if it did
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = None
            if isinstance(reply, dict):
                return reply
            failure = bad_reply(url, f"with no JSON object (try {attempt + 1})", raw.decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            if exc.code in (401, 403):
                raise ApiError(f"{url} refused the API key (HTTP {exc.code}): set ILR_JUDGE_API_KEY. {detail}") from exc
            failure = ApiError(f"{url} answered HTTP {exc.code} (try {attempt + 1}): {detail}")
            if exc.code not in _RETRY_STATUS:
                raise failure from exc
            retry_after = retry_after_seconds(exc.headers.get("Retry-After"), time.time())
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            failure = ApiError(f"{url} unreachable (try {attempt + 1}): {exc}")
        if attempt == max_retries:
            raise failure
        wait = min(60.0, backoff_s * 2**attempt) if retry_after is None else retry_after
        if wait > max_wait_s - waited:
            raise ApiError(
                f"{failure}; the retry would wait {wait:g} s{' (its Retry-After)' if retry_after is not None else ''}, "
                f"more than the {max_wait_s - waited:g} s left of the retry budget (max_wait_s={max_wait_s:g})"
            )
        logger.warning("%s; retrying in %g s", failure, wait)
        sleep(wait)
        waited += wait
        attempt += 1


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for: delay-seconds, or an HTTP-date minus `now` (at least 0).

    None when absent or unreadable (the caller's own backoff applies).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form without a zone is read as such
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def api_settings() -> tuple[str, str | None]:
    """Base URL and key of the OpenAI-compatible API, from the environment or `.env`."""
    load_env()
    return os.environ.get("ILR_JUDGE_BASE_URL") or DEFAULT_BASE_URL, os.environ.get("ILR_JUDGE_API_KEY") or None
