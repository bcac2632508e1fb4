"""Token prices for the savings ledger: what a cache hit saved, what provider prompt
caching saved.

Prices come from `genai-prices <https://pypi.org/project/genai-prices/>`_ (its bundled
data; its auto-update is never started, so nothing here goes to the network), or from a
per-model override table (``prices=`` on the LLM caches). The model of a response is its
``response_metadata["model_name"]`` / ``["model"]``, else the ``model_name`` / ``model``
parameter inside the ``llm_string``.

Token counts follow LangChain's ``usage_metadata``: ``input_tokens`` is every input token,
cached ones included; ``input_token_details.cache_read`` / ``cache_creation`` say how many
of them were read from / written to the provider's prompt cache.

Pricing one usage through genai-prices costs ~120 us, so results are memoised per
``(model, counts)``: hits on the same cached response cost a dict lookup after the first.

Example:
    ```python
    pricer = Pricer({"my-finetune": {"input": 0.3, "output": 1.2}})  # USD per 1M tokens
    pricer.price("gpt-4o-mini", TokenUsage(1000, 500))  # 0.00045, from genai-prices
    ```
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph_valkey_cache._failopen import Tally

__all__ = [
    "DEFAULT_PRICER",
    "PriceTable",
    "Pricer",
    "TokenPrices",
    "TokenUsage",
    "fresh_tally",
    "lookup_tally",
    "model_of",
    "usage_of",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")

_MTOK = 1_000_000


@dataclass(frozen=True)
class TokenPrices:
    """One model's prices in USD per million tokens (a ``prices=`` override).

    ``cache_read`` / ``cache_write``: the provider's prompt-cache rates; ``None`` prices
    those tokens at the ``input`` rate.
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    @classmethod
    def of(cls, value: TokenPrices | Mapping[str, float]) -> TokenPrices:
        if isinstance(value, TokenPrices):
            return value
        unknown = set(value) - {"input", "output", "cache_read", "cache_write"}
        if unknown:
            raise ValueError(
                f"unknown price fields {sorted(unknown)}: use input, output, cache_read, "
                "cache_write (USD per million tokens)"
            )
        return cls(
            input=float(value["input"]),
            output=float(value.get("output", 0.0)),
            cache_read=None if value.get("cache_read") is None else float(value["cache_read"]),
            cache_write=None if value.get("cache_write") is None else float(value["cache_write"]),
        )

    def cost(self, u: TokenUsage) -> float:
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        plain = max(0, u.input_tokens - u.cache_read - u.cache_write)
        return (
            plain * self.input
            + u.cache_read * read
            + u.cache_write * write
            + u.output_tokens * self.output
        ) / _MTOK


#: ``prices=``: model name (as the response reports it, case-insensitive) -> prices.
PriceTable = Mapping[str, TokenPrices | Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one model response (LangChain ``usage_metadata`` semantics)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def _message(gen: Any) -> Any:
    return getattr(gen, "message", None)


def usage_of(gen: Any) -> TokenUsage | None:
    """The usage a cached or fresh generation (or an ``AIMessage``) reports, if any."""
    msg = _message(gen) or gen
    um = getattr(msg, "usage_metadata", None)
    if not um:
        return None
    details = um.get("input_token_details") or {}
    try:
        return TokenUsage(
            int(um.get("input_tokens") or 0),
            int(um.get("output_tokens") or 0),
            int(details.get("cache_read") or 0),
            int(details.get("cache_creation") or 0),
        )
    except (TypeError, ValueError):  # a provider's odd usage dict: no figures, no crash
        return None


# ``_get_llm_string`` ends with ``str(sorted(params.items()))``: ('model_name', 'gpt-4o')
_LLM_STRING_MODEL = re.compile(
    r"""\(['"]model(?:_name|_id)?['"],\s*['"]([^'"]+)['"]\)"""
    r"""|["']model(?:_name|_id)?["']\s*:\s*["']([^"']+)["']"""
)


@functools.lru_cache(maxsize=1024)
def _model_from_llm_string(llm_string: str) -> str | None:
    m = _LLM_STRING_MODEL.search(llm_string)
    if m is None:
        return None
    return m.group(1) or m.group(2)


def model_of(gen: Any, llm_string: str | None = None) -> str | None:
    """The model that produced ``gen``: its response metadata, else the llm string."""
    msg = _message(gen) or gen
    meta = getattr(msg, "response_metadata", None) or {}
    for field in ("model_name", "model", "model_id"):
        name = meta.get(field)
        if isinstance(name, str) and name:
            return name
    if llm_string:
        return _model_from_llm_string(llm_string)
    return None


def _provider_of(gen: Any) -> str | None:
    meta = getattr(_message(gen) or gen, "response_metadata", None) or {}
    name = meta.get("model_provider")
    return name if isinstance(name, str) and name else None


_genai_lock = threading.Lock()
_unknown_logged: set[str] = set()


@functools.lru_cache(maxsize=8192)
def _genai_price(model: str, provider: str | None, u: TokenUsage) -> tuple[float, float] | None:
    """``(total, input part)`` in USD from genai-prices' bundled data; ``None`` when it
    does not know the model (logged once per model)."""
    try:
        import genai_prices  # imported on first use: ~0.25 s, not at package import
    except ImportError:  # pragma: no cover - a required dependency
        return None
    usage = genai_prices.Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read or None,
        cache_write_tokens=u.cache_write or None,
    )
    calc = None
    unknown = True
    with _genai_lock:  # its snapshot memoises lookups in plain dicts
        for pid in (provider, None) if provider else (None,):
            try:
                calc = genai_prices.calc_price(usage, model, provider_id=pid)
                break
            except LookupError:  # not this provider's (or nobody's) model
                continue
            except Exception as exc:  # counts it refuses (reads > input), a data change
                logger.debug("genai-prices cannot price %r %s: %s", model, u, exc)
                unknown = False
                break
    if calc is None:
        if unknown and model not in _unknown_logged:
            _unknown_logged.add(model)
            logger.info(
                "no price for model %r in genai-prices: its hits count tokens, not dollars "
                "(pass prices={%r: {'input': ..., 'output': ...}} to the cache)",
                model, model,
            )  # fmt: skip
        return None
    return float(calc.total_price), float(calc.input_price)


class Pricer:
    """Prices token usage: the override table first, then genai-prices.

    Args:
        overrides: model name -> :class:`TokenPrices` (or a dict with ``input``,
            ``output``, ``cache_read``, ``cache_write``; USD per million tokens). Names
            match case-insensitively; ``"*"`` prices every model genai-prices does not
            know.
    """

    def __init__(self, overrides: PriceTable | None = None) -> None:
        self.overrides = {k.lower(): TokenPrices.of(v) for k, v in (overrides or {}).items()}

    def _override(self, model: str | None) -> TokenPrices | None:
        if not self.overrides:
            return None
        if model is not None:
            found = self.overrides.get(model.lower())
            if found is not None:
                return found
        return None

    def _parts(self, model: str | None, provider: str | None, u: TokenUsage) -> tuple[float, float]:
        """``(total, input part)`` in USD; zeros when no price is known."""
        table = self._override(model)
        if table is not None:
            return table.cost(u), table.cost(
                TokenUsage(u.input_tokens, 0, u.cache_read, u.cache_write)
            )
        if model is not None:
            found = _genai_price(model, provider, u)
            if found is not None:
                return found
        fallback = self.overrides.get("*")
        if fallback is not None:
            return fallback.cost(u), fallback.cost(
                TokenUsage(u.input_tokens, 0, u.cache_read, u.cache_write)
            )
        return 0.0, 0.0

    def price(self, model: str | None, usage: TokenUsage, provider: str | None = None) -> float:
        """What ``usage`` cost on ``model`` in USD (0.0 when no price is known)."""
        return self._parts(model, provider, usage)[0]

    def provider_saving(
        self, model: str | None, usage: TokenUsage, provider: str | None = None
    ) -> float:
        """What provider prompt caching saved on ``usage``: its input at the full input
        rate minus its input as billed (reads at the discounted rate, writes at the
        cache-write premium). Negative when the write premium outweighs the reads."""
        read_saving, write_premium = self.provider_parts(model, usage, provider)
        return read_saving - write_premium

    def provider_parts(
        self, model: str | None, usage: TokenUsage, provider: str | None = None
    ) -> tuple[float, float]:
        """``(read saving, write premium)`` in USD: the cache reads at the input rate
        minus at the read rate, and the cache writes at the write rate minus at the
        input rate (both priced inside the response's whole input, so tiered rates
        apply as billed)."""
        if not usage.cache_read and not usage.cache_write:
            return 0.0, 0.0
        n = usage.input_tokens
        full = self._parts(model, provider, TokenUsage(n))[1]
        read_only = self._parts(model, provider, TokenUsage(n, 0, usage.cache_read))[1]
        billed = self._parts(
            model, provider, TokenUsage(n, 0, usage.cache_read, usage.cache_write)
        )[1]
        return full - read_only, billed - read_only


#: The pricer of caches built without ``prices=`` (genai-prices only).
DEFAULT_PRICER = Pricer()


@dataclass(slots=True)
class Priced:
    """One response's figures: its model, tokens and price."""

    model: str | None
    usage: TokenUsage
    usd: float


def price_generations(gens: Sequence[Any], llm_string: str | None, pricer: Pricer) -> Priced | None:
    """The tokens and price of one cached answer (its first generation carries the
    usage, as LangChain puts it on the message)."""
    for gen in gens:
        usage = usage_of(gen)
        if usage is None:
            continue
        model = model_of(gen, llm_string)
        return Priced(model, usage, pricer.price(model, usage, _provider_of(gen)))
    return None


# -- tallies: what the executor counts (see ``_failopen.Tally``) ------------------------

_MISS = Tally(misses=1)


def _cost_of(cost_of: Callable[[Sequence[Any]], float], gens: Sequence[Any]) -> float:
    try:
        return float(cost_of(gens))
    except Exception as exc:  # an estimator bug must not turn a hit into a failure
        logger.warning("cost_of failed: %s", exc)
        return 0.0


def lookup_tally(
    found: Sequence[Sequence[Any] | None],
    cost_of: Callable[[Sequence[Any]], float] | None = None,
    pricer: Pricer | None = None,
    llm_strings: Sequence[str | None] | str | None = None,
) -> Tally:
    """The :class:`Tally` of LLM-cache lookups: hits, misses, and per hit the cached
    response's tokens (``tokens_saved``) and price (``saved_usd``: ``cost_of(gens)``
    when given, else the tokens priced by ``pricer``), labelled by model."""
    pricer = pricer or DEFAULT_PRICER
    if len(found) == 1:  # the hot path: one lookup
        gens = found[0]
        if gens is None:
            return _MISS
        ls = llm_strings if isinstance(llm_strings, str) or llm_strings is None else llm_strings[0]
        priced = price_generations(gens, ls, pricer)
        usd = priced.usd if priced is not None else 0.0
        if cost_of is not None:
            usd = _cost_of(cost_of, gens)
        if priced is None:
            return Tally(hits=1, saved_usd=usd, model=model_of(gens[0], ls) if gens else None)
        return Tally(hits=1, tokens_saved=priced.usage.total, saved_usd=usd, model=priced.model)
    if isinstance(llm_strings, str) or llm_strings is None:
        llm_strings = [llm_strings] * len(found)
    hits = 0
    groups: dict[str | None, list[float]] = {}  # model -> [hits, tokens, usd]
    for gens, llm_string in zip(found, llm_strings, strict=True):
        if gens is None:
            continue
        hits += 1
        priced = price_generations(gens, llm_string, pricer)
        model = (
            priced.model if priced is not None else model_of(gens[0], llm_string) if gens else None
        )
        usd = _cost_of(cost_of, gens) if cost_of is not None else priced.usd if priced else 0.0
        g = groups.setdefault(model, [0, 0, 0.0])
        g[0] += 1
        g[1] += priced.usage.total if priced is not None else 0
        g[2] += usd
    misses = len(found) - hits
    if not hits:
        return _MISS if misses == 1 else Tally(misses=misses)
    parts = [
        Tally(hits=int(h), tokens_saved=int(tok), saved_usd=float(usd), model=model)
        for model, (h, tok, usd) in groups.items()
    ]
    if len(parts) == 1:
        parts[0].misses = misses
        return parts[0]
    return Tally(misses=misses, more=tuple(parts))


def fresh_tally(
    gens: Sequence[Any], llm_string: str | None, pricer: Pricer | None = None, stored_bytes: int = 0
) -> Tally:
    """The :class:`Tally` of a fresh response passing through a cache (its miss path):
    ``stored_bytes`` plus what the provider's prompt cache did on it
    (input tokens, cache reads and writes, the saving priced), labelled by model."""
    pricer = pricer or DEFAULT_PRICER
    for gen in gens:
        usage = usage_of(gen)
        if usage is None:
            continue
        model = model_of(gen, llm_string)
        read_saving, premium = pricer.provider_parts(model, usage, _provider_of(gen))
        return Tally(
            provider_input_tokens=usage.input_tokens,
            provider_read_tokens=usage.cache_read,
            provider_write_tokens=usage.cache_write,
            provider_saved_usd=float(read_saving - premium),
            provider_premium_usd=float(premium),
            model=model,
            stored_bytes=stored_bytes,
        )
    return Tally(stored_bytes=stored_bytes)
