"""The OpenAI-compatible client: the `openai` SDK pointed at `--base-url`,
with bounded concurrency, retries with exponential backoff on 429, 5xx and
timeouts, re-asking answers that do not validate, and a per-run tally of
requests, tokens and cost.

The SDK's own retries are off so that every attempt is counted here and the
backoff is ours (configurable; tests make it milliseconds)."""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from tempura_jax.annotate import answers
from tempura_jax.annotate.prompts import PROMPTS
from tempura_jax.overrides import option


class ApiError(RuntimeError):
    """A request that kept failing (429, 5xx, timeouts) or never validated."""


class ServerDown(RuntimeError):
    """The server cannot be reached at all, or refuses the credentials: the
    run stops, since every further request would fail the same way."""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str = option("http://127.0.0.1:8000/v1", "the server's OpenAI API root")
    model: str = option("gpt-4o", "model name sent with each request (part of the cache key)")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key")
    concurrency: int = option(8, "videos (so requests) in flight at once")
    timeout: float = option(120.0, "seconds per request")
    retries: int = option(5, "retries of a request after 429, 5xx, timeouts, connection errors")
    backoff: float = option(1.0, "first retry delay, seconds; doubles each retry (with jitter)")
    backoff_max: float = option(60.0, "longest retry delay, seconds")
    answer_retries: int = option(2, "re-asks of an answer that does not validate")
    structured: bool = option(True, "send response_format json_schema")
    temperature: float = option(0.2, "sampling temperature")
    max_tokens: int = option(4096, "completion tokens per request")
    price_input: float = option(2.5, "USD per million prompt tokens (tally only)")
    price_output: float = option(10.0, "USD per million completion tokens (tally only)")


class Tally:
    """Requests (every attempt), tokens and cache hits per stage; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.prompt_tokens: collections.Counter = collections.Counter()
        self.completion_tokens: collections.Counter = collections.Counter()
        self.cached: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()

    def add(self, counter: str, stage: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[stage] += n

    def cost(self, cfg: ClientConfig) -> float:
        return (
            sum(self.prompt_tokens.values()) * cfg.price_input
            + sum(self.completion_tokens.values()) * cfg.price_output
        ) / 1e6

    def summary(self, cfg: ClientConfig) -> dict:
        stages = sorted(set(self.requests) | set(self.cached))
        return {
            "requests": {s: self.requests[s] for s in stages},
            "cached": {s: self.cached[s] for s in stages},
            "failures": dict(self.failures),
            "tokens": {
                s: {"prompt": self.prompt_tokens[s], "completion": self.completion_tokens[s]}
                for s in stages
            },
            "cost_usd": round(self.cost(cfg), 6),
        }


def _retryable(e: Exception) -> bool:
    import openai

    if isinstance(e, (openai.RateLimitError, openai.APITimeoutError, openai.InternalServerError)):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in (408, 409, 429) or e.status_code >= 500
    return isinstance(e, openai.APIConnectionError)


class Client:
    def __init__(
        self,
        cfg: ClientConfig,
        tally: Tally | None = None,
        categories: tuple[str, ...] = PROMPTS.categories,
        sleep: Callable = time.sleep,
    ):
        import openai

        self.cfg, self.tally, self.categories, self._sleep = (
            cfg,
            tally or Tally(),
            categories,
            sleep,
        )
        key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers take any key
        self._sdk = openai.OpenAI(
            base_url=cfg.base_url, api_key=key, timeout=cfg.timeout, max_retries=0
        )
        self._slots = threading.BoundedSemaphore(cfg.concurrency)

    def _delay(self, attempt: int) -> float:
        base = min(self.cfg.backoff_max, self.cfg.backoff * 2**attempt)
        return base * (0.5 + random.random() / 2)

    def _send(self, stage: str, messages: list, headers: dict) -> Any:
        """One chat completion, retried on transient failures."""
        import openai

        kwargs = dict(
            model=self.cfg.model,
            messages=messages,
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            extra_headers=headers,
        )
        if self.cfg.structured:
            kwargs["response_format"] = answers.response_format(stage, self.categories)
        for attempt in range(self.cfg.retries + 1):
            self.tally.add("requests", stage)
            try:
                with self._slots:
                    return self._sdk.chat.completions.create(**kwargs)
            except openai.AuthenticationError as e:
                raise ServerDown(
                    f"{self.cfg.base_url}: the server refused the API key ({e})"
                ) from e
            except Exception as e:  # noqa: BLE001 - sorted below
                if not _retryable(e):
                    raise ApiError(f"{stage}: {type(e).__name__}: {e}") from e
                self.tally.add("failures", type(e).__name__)
                if attempt == self.cfg.retries:
                    timeout = isinstance(e, openai.APITimeoutError)
                    if isinstance(e, openai.APIConnectionError) and not timeout:
                        raise ServerDown(
                            f"cannot reach {self.cfg.base_url} after {attempt + 1} attempts "
                            f"({type(e).__name__}: {e})"
                        ) from e
                    raise ApiError(
                        f"{stage}: {attempt + 1} attempts failed, last: {type(e).__name__}: {e}"
                    ) from e
                self._sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def ask(
        self,
        stage: str,
        messages: list,
        check: Callable[[dict], Any] | None = None,
        headers: dict | None = None,
    ) -> Any:
        """The validated answer of `stage`: parsed against its schema, then
        `check(answer)` (which may raise InvalidAnswer or return a repaired
        value); an invalid answer is re-asked up to `answer_retries` times."""
        last = None
        for _ in range(self.cfg.answer_retries + 1):
            response = self._send(stage, messages, headers or {})
            usage = getattr(response, "usage", None)
            if usage is not None:
                self.tally.add("prompt_tokens", stage, usage.prompt_tokens or 0)
                self.tally.add("completion_tokens", stage, usage.completion_tokens or 0)
            text = response.choices[0].message.content if response.choices else None
            try:
                value = answers.parse(stage, text, self.categories)
                return check(value) if check is not None else value
            except answers.InvalidAnswer as e:
                self.tally.add("failures", f"invalid_{stage}")
                last = e
        raise answers.InvalidAnswer(
            f"{stage}: no valid answer in {self.cfg.answer_retries + 1} tries, last: {last}"
        )
