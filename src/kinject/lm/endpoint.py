"""One OpenAI-compatible HTTP endpoint, as both of kinject's clients talk to it: the
`openai-completions` scoring backend (`kinject.lm.completions`) and the chat generator
(`kinject.lm.generators`). It owns the API key lookup, the httpx client and the retry rule, so the
two cannot drift apart: connection errors, timeouts, HTTP 429 and 5xx and 200 replies that are
not a JSON object are retried with jittered exponential backoff (a server's Retry-After wins, up
to the cap); 401/403 stop with the key hint; any other status fails the request at once.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kinject.core.errors import KinjectError, one_line

if TYPE_CHECKING:
    import httpx

KEY_VARIABLES = ("KINJECT_API_KEY", "OPENAI_API_KEY")
"""Where the API key comes from, first set wins."""


def env_api_key() -> str | None:
    """The API key from the environment (`KEY_VARIABLES`), or None: servers such as vLLM need none."""
    return next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)


class RequestFailed(KinjectError):
    """A request that got no usable reply, in one line. `kind` names its last failure (connect,
    timeout, transport, bad_response, http_<status>, or skipped when the caller refused to try)
    and `status` its HTTP status, if it had one: callers that go on without the reply count it."""

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


class Endpoint:
    """An OpenAI-compatible base URL (usually ending in /v1) with the key, timeouts, connection
    limit and retry settings every request to it uses."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0, max_retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 30.0, concurrency: int = 4) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        key = api_key if api_key is not None else env_api_key()
        self._client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"} if key else {},
                                    timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                    limits=httpx.Limits(max_connections=max(1, concurrency)))

    def request(self, method: str, path: str, body: dict | None = None, *, retries: int | None = None,
                attempt: Callable[[int], bool] = lambda n: True,
                failed: Callable[[str], None] = lambda kind: None) -> dict[str, Any]:
        """The JSON object of a 200 reply. `attempt(n)` hears of try n before it is sent and may
        refuse it (a caller's give-up rule); `failed(kind)` hears of each try that failed. Raises
        `RequestFailed` when every try failed, one was refused, or the status is one a retry
        cannot mend, and `KinjectError` on 401/403 (a wrong key fails every request alike)."""
        import httpx

        retries = self.max_retries if retries is None else retries
        where = f"{self.base_url}{path}"
        failure: RequestFailed
        for n in range(max(0, retries) + 1):
            if not attempt(n):
                raise RequestFailed(f"{where}: not sent; the endpoint failed too many times in a row", "skipped")
            tries = f"after {n + 1} {'try' if n == 0 else 'tries'}"
            wait = min(self.max_backoff, self.backoff * 2 ** n) * (0.5 + random.random() / 2)
            try:
                r = self._client.request(method, path, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = RequestFailed(f"cannot reach {where} ({type(exc).__name__}); start the server or fix the "
                                        f"URL", "connect")
            except httpx.TimeoutException:
                failure = RequestFailed(f"{where} gave no reply within {self.timeout:g} s {tries}", "timeout")
            except httpx.TransportError as exc:
                failure = RequestFailed(f"{where}: the connection broke ({type(exc).__name__}) {tries}", "transport")
            else:
                if r.status_code in (401, 403):
                    raise KinjectError(f"{where}: HTTP {r.status_code} (not authorised); set "
                                       f"{' or '.join(KEY_VARIABLES)} to a valid key")
                if r.status_code == 200:
                    data = _json(r)
                    if isinstance(data, dict):
                        return data
                    failure = RequestFailed(f"{where} answered HTTP 200 without a JSON object {tries}; is "
                                            f"{self.base_url} an OpenAI-compatible base URL (usually ending in /v1)?",
                                            "bad_response")
                elif r.status_code == 429 or r.status_code >= 500:
                    failure = RequestFailed(f"{where}: HTTP {r.status_code} {tries}: {_error_message(r)}",
                                            f"http_{r.status_code}", r.status_code)
                    wait = _retry_after(r, self.max_backoff, wait)
                else:  # this request is wrong (too long, unknown path or model): retrying will not help
                    hint = "; check the base URL (usually ends in /v1)" if r.status_code == 404 else ""
                    failed(f"http_{r.status_code}")
                    raise RequestFailed(f"{where}: HTTP {r.status_code}: {_error_message(r)}{hint}",
                                        f"http_{r.status_code}", r.status_code)
            failed(failure.kind)
            if n < retries:
                time.sleep(wait)
        raise failure

    def close(self) -> None:
        """Release the HTTP client's connections."""
        self._client.close()


def _json(r: "httpx.Response") -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _retry_after(r: "httpx.Response", cap: float, otherwise: float) -> float:
    """The server's Retry-After in seconds (capped), else the backoff's own wait."""
    value = r.headers.get("retry-after", "")
    return min(cap, float(value)) if value.replace(".", "", 1).isdigit() else otherwise


def _error_message(r: "httpx.Response") -> str:
    """The server's own error message (OpenAI's `{"error": {"message": ...}}`), on one line."""
    data = _json(r)
    if isinstance(data, dict):
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else err or data.get("detail")
        if message:
            return one_line(str(message), 200)
    return one_line(r.text or r.reason_phrase, 200)
