"""``ValkeySemanticCache``: an LLM cache that also answers paraphrases, on valkey-search.

Each entry is a HASH ``<prefix>:s:<model digest>:<entry digest>`` with

- ``llm``  TAG: digest of the ``llm_string`` plus the conversation context (see below),
- ``vec``  FLOAT32 vector of the embedded text (COSINE),
- ``text`` the embedded text (what a judge/reranker compares), ``gens`` the generations
  (``langchain_core.load.dumps``, read back with an allowlist, as in :class:`ValkeyCache`).

A lookup is one FT.SEARCH, pre-filtered by the TAG so an answer never crosses models,
parameters, bound tools, system prompts or earlier turns::

    (@llm:{<tag>})=>[KNN k @vec $vec AS dist]   PARAMS 2 vec <bytes>   DIALECT 2

What is embedded (``embed="last_user"``, the default) is the text of the conversation's
last user turn; every other message (system prompt, earlier turns, and any AI/tool
messages after that user turn) goes into the TAG digest, so two conversations that differ
anywhere else never share an answer, and an agent's follow-up call after a tool result
never gets the answer of its first call. ``embed="prompt"`` embeds the whole prompt string.

A candidate at cosine distance ``d`` (``1 - cos``, as the server returns it) is a hit when
``d <= threshold``; the same float comparison serves the sync and async paths. With a
``judge`` or ``rerank`` callable, candidates with ``threshold < d <= threshold + band`` are
decided by it (sync or async callables, with a timeout; ``on_judge_error`` picks what a
failure means). Observed distances feed :meth:`ValkeySemanticCache.threshold_effectiveness`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import json
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Literal

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.embeddings import Embeddings
from langchain_core.outputs import Generation

from langgraph_valkey_cache._client import ascan_keys, client_from_url, scan_keys
from langgraph_valkey_cache._keys import LLMCacheKeys, digest
from langgraph_valkey_cache._search import (
    SearchModuleMissing,
    escape_tag,
    is_index_exists_error,
    is_missing_index_error,
    is_unknown_command_error,
    pack_vector,
    parse_info,
    parse_search,
)
from langgraph_valkey_cache._stats import SharedStatsMixin
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker, report_failure
from langgraph_valkey_cache.cache.embeddings import CachedEmbeddings, ValkeyByteStore
from langgraph_valkey_cache.cache.llm import LLMCacheCodec, _ClientPair, count_result

__all__ = ["SemanticQuery", "ValkeySemanticCache", "split_prompt"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

Judge = Callable[[str, str], "bool | Awaitable[bool]"]
Rerank = Callable[[str, list[str]], "int | None | Awaitable[int | None]"]

_HUMAN = {"HumanMessage", "HumanMessageChunk"}
_DELETE_BATCH = 500
_STEP = Decimal("0.0001")
_threshold_override: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "valkey_semantic_threshold", default=None
)


# -- prompt -> (embedded text, context) : pure --------------------------------------------


def _is_human(node: Any) -> bool:
    if not isinstance(node, dict) or node.get("lc") != 1:
        return False
    ident = node.get("id") or []
    if ident and ident[-1] in _HUMAN:
        return True
    kwargs = node.get("kwargs") or {}
    return bool(ident and ident[-1] in ("ChatMessage", "ChatMessageChunk")) and (
        kwargs.get("role") == "user"
    )


def split_prompt(
    prompt: str, mode: Literal["last_user", "prompt"] = "last_user"
) -> tuple[str, str]:
    """``(text to embed, context)`` of a cache prompt.

    For a chat prompt (LangChain's JSON dump of the messages) in ``last_user`` mode, the
    text is the last human message's text and the context a canonical JSON of everything
    else: the messages before and after it, that message's other fields and its non-text
    content blocks (images...). Other prompts are embedded whole with an empty context.
    """
    if mode == "prompt" or prompt[:1] != "[":
        return prompt, ""
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt, ""
    if not isinstance(messages, list):
        return prompt, ""
    last = next((i for i in range(len(messages) - 1, -1, -1) if _is_human(messages[i])), None)
    if last is None:
        return prompt, ""
    kwargs = dict(messages[last].get("kwargs") or {})
    content = kwargs.pop("content", "")
    kwargs.pop("id", None)
    extra: list[Any] = []
    if isinstance(content, str):
        text = content
    else:
        parts: list[str] = []
        for block in content or []:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                extra.append(block)
        text = "\n".join(parts)
    if not text.strip():  # nothing to embed (an image-only turn): embed the whole prompt
        return prompt, ""
    context = json.dumps(
        {"before": messages[:last], "after": messages[last + 1 :], "turn": kwargs, "blocks": extra},
        sort_keys=True,
        separators=(",", ":"),
    )
    return text, context


@dataclass(frozen=True)
class SemanticQuery:
    """One prepared lookup (no I/O yet)."""

    text: str
    tag: str
    threshold: float
    llm_string: str


@dataclass(frozen=True)
class _Candidate:
    distance: float
    text: str
    gens: Any  # raw stored value


@dataclass(frozen=True)
class _Observation:
    distance: float | None
    threshold: float
    outcome: str  # hit, miss, band_accept, band_reject, band_error


class ValkeySemanticCache(SharedStatsMixin, BaseCache):
    """Semantic LLM cache on Valkey with valkey-search (FT.* vector index).

    Args:
        client: a sync or async valkey-py client (or both, with ``async_client=``).
        embeddings: a LangChain ``Embeddings``; its vectors are cached in Valkey
            (``cache_embeddings=True``) so a repeated text is embedded once.
        prefix: key prefix (and index name ``<prefix>:idx``).
        distance_threshold: cosine distance (``1 - cos``) at or below which a candidate hits.
        ttl: seconds each entry lives; ``None`` keeps entries.
        embed: ``"last_user"`` (default) or ``"prompt"`` (see the module docs).
        dims: vector dimensions; ``None`` asks the embedder once at setup.
        embeddings_namespace: separates cached vectors of different models (default:
            :func:`~langgraph_valkey_cache.cache.embeddings.default_namespace`).
        algorithm: ``"HNSW"`` (default) or ``"FLAT"``.
        category_thresholds / categorize: ``categorize(text)`` names a category whose
            threshold (from ``category_thresholds``) replaces the default.
        judge: ``judge(prompt_text, candidate_text) -> bool`` (sync or async) decides
            candidates in the uncertainty band.
        rerank: ``rerank(prompt_text, candidate_texts) -> index | None`` picks among the
            ``rerank_k`` nearest candidates within ``threshold + band``.
        band: width of the uncertainty band above the threshold (only with judge/rerank).
        judge_timeout: seconds a judge/rerank call may take.
        on_judge_error: ``"miss"`` (default, the model is called) or ``"hit"`` (accept the
            nearest band candidate) when the judge fails or times out.
        window: how many lookups :meth:`threshold_effectiveness` looks back on.
        cost_of: ``cost_of(generations) -> USD`` for the ``cost_saved_usd`` metric.
        failure_cooldown: after a server error, seconds during which lookups are misses
            and updates no-ops without touching the server or embedding anything (one
            timeout and one warning per cooldown while it is down or stalled); 0: off.
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> cache = ValkeySemanticCache(client, OpenAIEmbeddings(), distance_threshold=0.1)
        >>> cache.setup()  # doctest: +SKIP
        >>> set_llm_cache(cache)  # doctest: +SKIP

    Server errors make a lookup a miss and an update a no-op (logged, counted), and the
    server is then skipped for ``failure_cooldown`` (the embedding cache shares that
    breaker); ``clear`` raises. A server
    without the search module makes :meth:`setup` raise :class:`SearchModuleMissing`.
    """

    def __init__(
        self,
        client: Any = None,
        embeddings: Embeddings | None = None,
        *,
        async_client: Any = None,
        prefix: str = "lgv:llmsem",
        distance_threshold: float = 0.1,
        ttl: float | None = None,
        embed: Literal["last_user", "prompt"] = "last_user",
        dims: int | None = None,
        algorithm: Literal["HNSW", "FLAT"] = "HNSW",
        cache_embeddings: bool = True,
        embeddings_namespace: str | None = None,
        category_thresholds: dict[str, float] | None = None,
        categorize: Callable[[str], str | None] | None = None,
        judge: Judge | None = None,
        rerank: Rerank | None = None,
        band: float = 0.0,
        rerank_k: int = 3,
        judge_timeout: float = 5.0,
        on_judge_error: Literal["miss", "hit"] = "miss",
        window: int = 1000,
        metrics: Any = True,
        cost_of: Callable[[Sequence[Generation]], float] | None = None,
        failure_cooldown: float = 5.0,
        stats_flush_interval: float = 1.0,
    ) -> None:
        if embeddings is None:
            raise ValueError("ValkeySemanticCache needs an Embeddings instance")
        if not 0 <= distance_threshold <= 2:
            raise ValueError("distance_threshold is a cosine distance in [0, 2]")
        if embed not in ("last_user", "prompt"):
            raise ValueError("embed must be 'last_user' or 'prompt'")
        if algorithm not in ("HNSW", "FLAT"):
            raise ValueError("algorithm must be 'HNSW' or 'FLAT'")
        if on_judge_error not in ("miss", "hit"):
            raise ValueError("on_judge_error must be 'miss' or 'hit'")
        if band < 0 or rerank_k < 1:
            raise ValueError("band must be >= 0 and rerank_k >= 1")
        self._clients = _ClientPair(client, async_client, "ValkeySemanticCache")
        self.codec = LLMCacheCodec(prefix, ttl=ttl)
        self.keys: LLMCacheKeys = self.codec.keys
        self.telemetry = Telemetry("semantic_cache", metrics=metrics)
        self.cost_of = cost_of
        self.breaker = Breaker(failure_cooldown)
        self.shared_stats = self._clients.shared_stats(
            self.keys.stats(), stats_flush_interval, self.breaker, self.telemetry
        )
        self.distance_threshold = distance_threshold
        self.embed_mode = embed
        self.dims = dims
        self.algorithm = algorithm
        self.category_thresholds = dict(category_thresholds or {})
        self.categorize = categorize
        self.judge = judge
        self.rerank = rerank
        self.band = band if (judge or rerank) else 0.0
        self.rerank_k = rerank_k if rerank else 1
        self.judge_timeout = judge_timeout
        self.on_judge_error = on_judge_error
        self.embeddings: Embeddings = embeddings
        if cache_embeddings:
            store = ValkeyByteStore(
                self._clients.sync_client,
                async_client=self._clients.async_client,
                prefix=f"{prefix}:emb",
                ttl=ttl,
                metrics=metrics,
                breaker=self.breaker,
            )
            self.embeddings = CachedEmbeddings(embeddings, store, namespace=embeddings_namespace)
        self._observations: deque[_Observation] = deque(maxlen=window)
        self._obs_lock = threading.Lock()
        self._ready = False
        self._judge_pool: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_url(cls, url: str, embeddings: Embeddings, **kwargs: Any) -> ValkeySemanticCache:
        """A cache with a sync and an async client built from ``url``."""
        return cls(
            client_from_url(url),
            embeddings,
            async_client=client_from_url(url, asyncio=True),
            **kwargs,
        )

    # -- pure helpers -------------------------------------------------------------------

    def _threshold_for(self, text: str, override: float | None) -> float:
        if override is not None:
            return override
        ctx = _threshold_override.get()
        if ctx is not None:
            return ctx
        if self.categorize is not None:
            category = self.categorize(text)
            if category is not None and category in self.category_thresholds:
                return self.category_thresholds[category]
        return self.distance_threshold

    def prepare(
        self, prompt: str, llm_string: str, distance_threshold: float | None = None
    ) -> SemanticQuery:
        text, context = split_prompt(prompt, self.embed_mode)
        tag = digest("sem", llm_string, context)
        return SemanticQuery(text, tag, self._threshold_for(text, distance_threshold), llm_string)

    def _create_args(self, dims: int) -> list[Any]:
        algo = [self.algorithm, 6, "TYPE", "FLOAT32", "DIM", dims, "DISTANCE_METRIC", "COSINE"]
        return [
            "FT.CREATE", self.keys.index(), "ON", "HASH",
            "PREFIX", 1, self.keys.semantic_key_prefix(),
            "SCHEMA", "llm", "TAG", "vec", "VECTOR", *algo,
        ]  # fmt: skip

    def _search_args(self, query: SemanticQuery, vector: Sequence[float]) -> list[Any]:
        k = self.rerank_k
        expr = f"(@llm:{{{escape_tag(query.tag)}}})=>[KNN {k} @vec $vec AS dist]"
        return [
            "FT.SEARCH", self.keys.index(), expr,
            "PARAMS", 2, "vec", pack_vector(vector, self.dims),
            "RETURN", 3, "dist", "text", "gens",
            "LIMIT", 0, k, "DIALECT", 2,
        ]  # fmt: skip

    @staticmethod
    def _candidates(reply: Any) -> list[_Candidate]:
        _, docs = parse_search(reply)
        out = []
        for _key, fields in docs:
            try:
                dist = float(fields["dist"])
            except (KeyError, TypeError, ValueError):
                continue
            text = fields.get("text", b"")
            text = text.decode() if isinstance(text, bytes) else str(text)
            out.append(_Candidate(dist, text, fields.get("gens")))
        out.sort(key=lambda c: c.distance)  # servers may return KNN hits unsorted
        return out

    def _hset_mapping(self, query: SemanticQuery, vector: Sequence[float], value: str) -> dict:
        return {
            "llm": query.tag,
            "vec": pack_vector(vector, self.dims),
            "text": query.text,
            "gens": value,
            "ts": f"{time.time():.3f}",
        }

    def _observe(
        self,
        distance: float | None,
        threshold: float,
        outcome: str,
        gens: list[Generation] | None = None,
    ) -> list[Generation] | None:
        with self._obs_lock:
            self._observations.append(_Observation(distance, threshold, outcome))
        count_result(self.telemetry, gens, self.cost_of, self.shared_stats)
        return gens

    def _decide(
        self, query: SemanticQuery, cands: list[_Candidate]
    ) -> tuple[list[Generation] | None, list[_Candidate]]:
        """A direct hit, or the candidates for the judge (empty: a miss)."""
        if not cands:
            self._observe(None, query.threshold, "miss")
            return None, []
        best = cands[0]
        if best.distance <= query.threshold:
            gens = self.codec.decode(best.gens)
            outcome = "hit" if gens is not None else "miss"
            return self._observe(best.distance, query.threshold, outcome, gens), []
        band = [c for c in cands if c.distance <= query.threshold + self.band]
        if not band:
            self._observe(best.distance, query.threshold, "miss")
        return None, band

    def _settle(
        self, query: SemanticQuery, band: list[_Candidate], choice: int | None, error: bool
    ) -> list[Generation] | None:
        if error:
            choice = 0 if self.on_judge_error == "hit" else None
        outcome = (
            "band_error" if error else ("band_accept" if choice is not None else "band_reject")
        )
        if choice is None or not 0 <= choice < len(band):
            return self._observe(band[0].distance, query.threshold, outcome)
        picked = band[choice]
        return self._observe(
            picked.distance, query.threshold, outcome, self.codec.decode(picked.gens)
        )

    # -- setup --------------------------------------------------------------------------

    def _dims(self) -> int:
        if self.dims is None:
            self.dims = len(self.embeddings.embed_query("dimension probe"))
        return self.dims

    async def _adims(self) -> int:
        if self.dims is None:
            self.dims = len(await self.embeddings.aembed_query("dimension probe"))
        return self.dims

    def _created(self, exc: BaseException | None) -> bool:
        """True when the index already existed (its dimensions are then checked)."""
        if exc is None:
            return False
        if is_unknown_command_error(exc):
            raise SearchModuleMissing("ValkeySemanticCache") from exc
        if not is_index_exists_error(exc):
            raise exc
        return True

    def _check_existing(self, info: Any) -> None:
        found = _vector_dim(parse_info(info).get("attributes"))
        if found is not None and self.dims is not None and found != self.dims:
            raise ValueError(
                f"index {self.keys.index()!r} holds {found}-dimensional vectors but the "
                f"embeddings give {self.dims}: use another prefix for this model"
            )

    def setup(self) -> None:
        """Create the FT index (idempotent). Raises ``SearchModuleMissing`` without the
        search module and ``ValueError`` when the existing index has other dimensions."""
        args = self._create_args(self._dims())
        client = self._clients.sync()
        try:
            client.execute_command(*args)
        except Exception as exc:
            if self._created(exc):
                self._check_existing(client.execute_command("FT.INFO", self.keys.index()))
        self._ready = True

    async def asetup(self) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            self.setup()
            return
        args = self._create_args(await self._adims())
        try:
            await aclient.execute_command(*args)
        except Exception as exc:
            if self._created(exc):
                self._check_existing(await aclient.execute_command("FT.INFO", self.keys.index()))
        self._ready = True

    def _failed(self, operation: str, exc: BaseException, lookups: int = 0) -> None:
        if is_missing_index_error(exc):
            # someone dropped the index: the server is fine, so no cooldown; recreate
            # the index on the next call instead of failing forever
            self._ready = False
            report_failure(self.telemetry, operation, exc)
        else:
            self.breaker.fail(self.telemetry, operation, exc)
        self.shared_stats.record(errors=1, misses=lookups)

    def _bypassed(self, lookups: int = 0) -> bool:
        """True while the breaker is open (a recent server error): count ``lookups``
        misses, and the caller skips the server and the embedding model."""
        if self.breaker.closed:
            return False
        if lookups:
            self.telemetry.result("miss", lookups)
            self.shared_stats.record(misses=lookups)
        return True

    def _ensure(self) -> bool:
        if self._ready:
            return True
        try:
            self.setup()
        except CACHE_ERRORS as exc:
            self._failed("setup", exc)
            return False
        return True

    async def _aensure(self) -> bool:
        if self._ready:
            return True
        try:
            await self.asetup()
        except CACHE_ERRORS as exc:
            self._failed("setup", exc)
            return False
        return True

    # -- judge / rerank -----------------------------------------------------------------

    def _call_judge(self, query: SemanticQuery, band: list[_Candidate]) -> int | None:
        if self.rerank is not None:
            texts = [c.text for c in band]
            return _as_index(_resolve_sync(self.rerank(query.text, texts)))
        assert self.judge is not None
        return 0 if _resolve_sync(self.judge(query.text, band[0].text)) else None

    def _judge_sync(self, query: SemanticQuery, band: list[_Candidate]) -> list[Generation] | None:
        if self._judge_pool is None:
            self._judge_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="valkey-semantic-judge"
            )
        future = self._judge_pool.submit(
            contextvars.copy_context().run, self._call_judge, query, band
        )
        try:
            choice = future.result(timeout=self.judge_timeout)
        except Exception as exc:
            logger.warning("semantic cache judge failed (%s): %s", type(exc).__name__, exc)
            self.telemetry.error("judge")
            return self._settle(query, band, None, error=True)
        return self._settle(query, band, choice, error=False)

    async def _acall_judge(self, query: SemanticQuery, band: list[_Candidate]) -> int | None:
        if self.rerank is not None:
            fn: Callable[..., Any] = self.rerank
            args: tuple[Any, ...] = (query.text, [c.text for c in band])
        else:
            fn, args = self.judge, (query.text, band[0].text)  # type: ignore[assignment]
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args)
        else:
            # a user's sync callable may block (an LLM call): keep it off the loop
            result = await asyncio.to_thread(fn, *args)
            if inspect.isawaitable(result):
                result = await result
        if self.rerank is not None:
            return _as_index(result)
        return 0 if result else None

    async def _judge_async(
        self, query: SemanticQuery, band: list[_Candidate]
    ) -> list[Generation] | None:
        try:
            choice = await asyncio.wait_for(self._acall_judge(query, band), self.judge_timeout)
        except Exception as exc:
            logger.warning("semantic cache judge failed (%s): %s", type(exc).__name__, exc)
            self.telemetry.error("judge")
            return self._settle(query, band, None, error=True)
        return self._settle(query, band, choice, error=False)

    # -- lookup -------------------------------------------------------------------------

    def lookup(
        self, prompt: str, llm_string: str, *, distance_threshold: float | None = None
    ) -> RETURN_VAL_TYPE | None:
        query = self.prepare(prompt, llm_string, distance_threshold)
        client = self._clients.sync()
        if self._bypassed(1):
            return None
        with self.telemetry.operation("lookup"):
            if not self._ensure():
                self.shared_stats.record(misses=1)
                return None
            vector = self.embeddings.embed_query(query.text)
            if self._bypassed(1):  # the embedding cache just failed
                return None
            try:
                reply = client.execute_command(*self._search_args(query, vector))
            except CACHE_ERRORS as exc:
                self._failed("lookup", exc, lookups=1)
                return None
            gens, band = self._decide(query, self._candidates(reply))
            if band:
                gens = self._judge_sync(query, band)
        self.shared_stats.maybe_flush()
        return gens

    async def alookup(
        self, prompt: str, llm_string: str, *, distance_threshold: float | None = None
    ) -> RETURN_VAL_TYPE | None:
        aclient = self._clients.async_client
        if aclient is None:
            return await asyncio.to_thread(
                contextvars.copy_context().run,
                lambda: self.lookup(prompt, llm_string, distance_threshold=distance_threshold),
            )
        query = self.prepare(prompt, llm_string, distance_threshold)
        if self._bypassed(1):
            return None
        with self.telemetry.operation("lookup"):
            if not await self._aensure():
                self.shared_stats.record(misses=1)
                return None
            vector = await self.embeddings.aembed_query(query.text)
            if self._bypassed(1):
                return None
            try:
                reply = await aclient.execute_command(*self._search_args(query, vector))
            except CACHE_ERRORS as exc:
                self._failed("lookup", exc, lookups=1)
                return None
            gens, band = self._decide(query, self._candidates(reply))
            if band:
                gens = await self._judge_async(query, band)
        await self.shared_stats.amaybe_flush()
        return gens

    def nearest(self, prompt: str, llm_string: str) -> float | None:
        """The cosine distance of the nearest entry this prompt could hit (diagnostics)."""
        query = self.prepare(prompt, llm_string)
        if not self._ready:
            self.setup()
        vector = self.embeddings.embed_query(query.text)
        cands = self._candidates(
            self._clients.sync().execute_command(*self._search_args(query, vector))
        )
        return cands[0].distance if cands else None

    async def anearest(self, prompt: str, llm_string: str) -> float | None:
        aclient = self._clients.async_client
        if aclient is None:
            return await asyncio.to_thread(self.nearest, prompt, llm_string)
        query = self.prepare(prompt, llm_string)
        if not self._ready:
            await self.asetup()
        vector = await self.embeddings.aembed_query(query.text)
        cands = self._candidates(await aclient.execute_command(*self._search_args(query, vector)))
        return cands[0].distance if cands else None

    # -- batches ------------------------------------------------------------------------

    def _embed_many(self, texts: list[str]) -> list[list[float]]:
        if isinstance(self.embeddings, CachedEmbeddings):
            return self.embeddings.embed_queries(texts)
        return [self.embeddings.embed_query(t) for t in texts]

    async def _aembed_many(self, texts: list[str]) -> list[list[float]]:
        if isinstance(self.embeddings, CachedEmbeddings):
            return await self.embeddings.aembed_queries(texts)
        return [await self.embeddings.aembed_query(t) for t in texts]

    def check_batch(
        self, prompts: Sequence[str], llm_string: str, *, distance_threshold: float | None = None
    ) -> list[list[Generation] | None]:
        """Look up many prompts: one batched embedding and one pipelined round trip."""
        if not prompts:
            return []
        queries = [self.prepare(p, llm_string, distance_threshold) for p in prompts]
        client = self._clients.sync()
        if self._bypassed(len(queries)):
            return [None] * len(queries)
        with self.telemetry.operation("check_batch"):
            if not self._ensure():
                self.shared_stats.record(misses=len(queries))
                return [None] * len(queries)
            vectors = self._embed_many([q.text for q in queries])
            if self._bypassed(len(queries)):
                return [None] * len(queries)
            try:
                pipe = client.pipeline(transaction=False)
                for q, v in zip(queries, vectors, strict=True):
                    pipe.execute_command(*self._search_args(q, v))
                replies = pipe.execute(raise_on_error=False)
            except CACHE_ERRORS as exc:
                self._failed("check_batch", exc, lookups=len(queries))
                return [None] * len(queries)
            out: list[list[Generation] | None] = []
            for q, reply in zip(queries, replies, strict=True):
                if isinstance(reply, Exception):
                    self._failed("check_batch", reply, lookups=1)
                    out.append(None)
                    continue
                gens, band = self._decide(q, self._candidates(reply))
                out.append(self._judge_sync(q, band) if band else gens)
        self.shared_stats.maybe_flush()
        return out

    async def acheck_batch(
        self, prompts: Sequence[str], llm_string: str, *, distance_threshold: float | None = None
    ) -> list[list[Generation] | None]:
        aclient = self._clients.async_client
        if aclient is None:
            return await asyncio.to_thread(
                self.check_batch, prompts, llm_string, distance_threshold=distance_threshold
            )
        if not prompts:
            return []
        queries = [self.prepare(p, llm_string, distance_threshold) for p in prompts]
        if self._bypassed(len(queries)):
            return [None] * len(queries)
        with self.telemetry.operation("check_batch"):
            if not await self._aensure():
                self.shared_stats.record(misses=len(queries))
                return [None] * len(queries)
            vectors = await self._aembed_many([q.text for q in queries])
            if self._bypassed(len(queries)):
                return [None] * len(queries)
            try:
                pipe = aclient.pipeline(transaction=False)
                for q, v in zip(queries, vectors, strict=True):
                    pipe.execute_command(*self._search_args(q, v))
                replies = await pipe.execute(raise_on_error=False)
            except CACHE_ERRORS as exc:
                self._failed("check_batch", exc, lookups=len(queries))
                return [None] * len(queries)
            out: list[list[Generation] | None] = []
            for q, reply in zip(queries, replies, strict=True):
                if isinstance(reply, Exception):
                    self._failed("check_batch", reply, lookups=1)
                    out.append(None)
                    continue
                gens, band = self._decide(q, self._candidates(reply))
                out.append(await self._judge_async(q, band) if band else gens)
        await self.shared_stats.amaybe_flush()
        return out

    # -- update / clear -----------------------------------------------------------------

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        query = self.prepare(prompt, llm_string)
        value = self.codec.encode(return_val)
        key = self.keys.semantic(llm_string, query.tag, query.text)
        client = self._clients.sync()
        if self._bypassed():
            return
        with self.telemetry.operation("update"):
            if not self._ensure():
                return
            vector = self.embeddings.embed_query(query.text)
            if self._bypassed():
                return
            mapping = self._hset_mapping(query, vector, value)
            try:
                pipe = client.pipeline(transaction=True)
                pipe.hset(key, mapping=mapping)
                if self.codec.ttl_ms is not None:
                    pipe.pexpire(key, self.codec.ttl_ms)
                pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("update", exc)
                return
            self.telemetry.stored(len(value) + len(mapping["vec"]))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await asyncio.to_thread(self.update, prompt, llm_string, return_val)
            return
        query = self.prepare(prompt, llm_string)
        value = self.codec.encode(return_val)
        key = self.keys.semantic(llm_string, query.tag, query.text)
        if self._bypassed():
            return
        with self.telemetry.operation("update"):
            if not await self._aensure():
                return
            vector = await self.embeddings.aembed_query(query.text)
            if self._bypassed():
                return
            mapping = self._hset_mapping(query, vector, value)
            try:
                pipe = aclient.pipeline(transaction=True)
                pipe.hset(key, mapping=mapping)
                if self.codec.ttl_ms is not None:
                    pipe.pexpire(key, self.codec.ttl_ms)
                await pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("update", exc)
                return
            self.telemetry.stored(len(value) + len(mapping["vec"]))

    def clear(self, **kwargs: Any) -> None:
        """Delete this cache's entries (``llm_string=...``: one model's); keeps the index
        and the embedding cache."""
        client = self._clients.sync()
        pattern = self.keys.semantic_pattern(kwargs.get("llm_string"))
        with self.telemetry.operation("clear"):
            batch: list[Any] = []
            for key in scan_keys(client, pattern):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)

    async def aclear(self, **kwargs: Any) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await asyncio.to_thread(self.clear, **kwargs)
            return
        pattern = self.keys.semantic_pattern(kwargs.get("llm_string"))
        with self.telemetry.operation("clear"):
            batch: list[Any] = []
            async for key in ascan_keys(aclient, pattern):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    await aclient.unlink(*batch)
                    batch = []
            if batch:
                await aclient.unlink(*batch)

    def drop_index(self) -> None:
        """Drop the FT index (entries stay; ``clear()`` removes them)."""
        self._clients.sync().execute_command("FT.DROPINDEX", self.keys.index())
        self._ready = False

    # -- thresholds ---------------------------------------------------------------------

    @contextlib.contextmanager
    def threshold(self, distance_threshold: float) -> Iterator[None]:
        """Use another threshold for lookups in this block (also through LangChain)."""
        token = _threshold_override.set(distance_threshold)
        try:
            yield
        finally:
            _threshold_override.reset(token)

    def threshold_effectiveness(self) -> dict[str, Any]:
        """Recommend a tighter or looser threshold from the recent lookups, with reasons.

        Looks at the nearest distance of each of the last ``window`` lookups: how many hit,
        how many missed just above the threshold ("near misses"), how close hits came to
        the threshold, and, when a judge/reranker decided band candidates, how often it
        accepted them (the only ground truth the cache sees).
        """
        with self._obs_lock:
            obs = list(self._observations)
        threshold = self.distance_threshold
        report: dict[str, Any] = {
            "threshold": threshold,
            "lookups": len(obs),
            "recommendation": "keep",
            "suggested_threshold": threshold,
            "reasons": [],
        }
        if len(obs) < 20:
            report["reasons"].append(f"only {len(obs)} lookups observed; need 20+ to judge")
            return report
        hit_obs = [
            (o.distance, o.threshold) for o in obs if o.outcome == "hit" and o.distance is not None
        ]
        hits = [d for d, _ in hit_obs]
        misses = [o for o in obs if o.outcome == "miss" and o.distance is not None]
        accepted = [
            o.distance for o in obs if o.outcome == "band_accept" and o.distance is not None
        ]
        rejected = [
            o.distance for o in obs if o.outcome == "band_reject" and o.distance is not None
        ]
        margin = max(0.02, threshold * 0.5)
        near = [
            o.distance
            for o in misses
            if o.distance is not None and o.distance - o.threshold <= margin
        ]
        # judged against the threshold each lookup used (per call, per category...)
        edge_hits = [d for d, used in hit_obs if d >= used * 0.8]
        dists = sorted(o.distance for o in obs if o.distance is not None)
        report.update(
            hit_rate=round((len(hits) + len(accepted)) / len(obs), 4),
            near_miss_rate=round(len(near) / len(obs), 4),
            edge_hit_rate=round(len(edge_hits) / max(1, len(hits)), 4),
            judge_accept_rate=(
                round(len(accepted) / (len(accepted) + len(rejected)), 4)
                if accepted or rejected
                else None
            ),
            distance_p50=round(statistics.median(dists), 4) if dists else None,
            distance_p90=round(dists[int(0.9 * (len(dists) - 1))], 4) if dists else None,
        )
        reasons = report["reasons"]
        if accepted or rejected:
            rate = report["judge_accept_rate"]
            if rate >= 0.8 and accepted:
                report["recommendation"] = "loosen"
                report["suggested_threshold"] = _round_up(max(accepted))
                reasons.append(
                    f"the judge accepted {rate:.0%} of band candidates (up to distance "
                    f"{max(accepted):.3f}): those could be direct hits without a judge call"
                )
            elif rate <= 0.2 and rejected:
                report["recommendation"] = "tighten" if edge_hits else "keep"
                if edge_hits:
                    report["suggested_threshold"] = _round_down(threshold * 0.8)
                reasons.append(
                    f"the judge rejected {1 - rate:.0%} of band candidates: answers just "
                    "above the threshold are usually wrong, so hits near it are suspect too"
                )
            else:
                reasons.append(f"the judge accepted {rate:.0%} of band candidates: band is useful")
            return report
        if report["near_miss_rate"] >= 0.2 and report["edge_hit_rate"] < 0.5:
            report["recommendation"] = "loosen"
            report["suggested_threshold"] = _round_up(sorted(near)[int(0.5 * (len(near) - 1))])
            reasons.append(
                f"{report['near_miss_rate']:.0%} of lookups missed within {margin:.3f} of "
                "the threshold while hits sit well inside it: likely paraphrases being missed "
                "(verify with a judge before loosening in production)"
            )
        elif report["edge_hit_rate"] >= 0.5 and len(hits) >= 10:
            report["recommendation"] = "tighten"
            report["suggested_threshold"] = _round_down(threshold * 0.8)
            reasons.append(
                f"{report['edge_hit_rate']:.0%} of hits are in the top 20% of the threshold: "
                "many answers are served from borderline matches"
            )
        else:
            reasons.append("hits sit inside the threshold and few lookups miss narrowly")
        return report

    def close(self) -> None:
        """Flush the pending stats, stop the judge pool and close the sync client."""
        if self._judge_pool is not None:
            self._judge_pool.shutdown(wait=False)
        if self._clients.sync_client is not None:
            self.shared_stats.flush()
            self._clients.sync_client.close()

    async def aclose(self) -> None:
        """Flush the pending stats and close the async client."""
        if self._clients.async_client is not None:
            await self.shared_stats.aflush()
            await self._clients.async_client.aclose()


def _round_up(distance: float) -> float:
    """``distance`` rounded up to 4 decimals: a threshold suggested from an observed
    distance must still let that distance hit (``d <= threshold``)."""
    return float(Decimal(repr(distance)).quantize(_STEP, rounding=ROUND_CEILING))


def _round_down(distance: float) -> float:
    """``distance`` rounded down to 4 decimals (a tightened threshold stays tighter)."""
    return float(Decimal(repr(distance)).quantize(_STEP, rounding=ROUND_FLOOR))


def _resolve_sync(result: Any) -> Any:
    """A sync caller's view of a judge result: awaitables run on a private loop (this
    runs in the judge worker thread, never on the caller's loop)."""
    if inspect.isawaitable(result):

        async def _await() -> Any:
            return await result

        return asyncio.run(_await())
    return result


def _vector_dim(node: Any) -> int | None:
    """The dimension of the ``vec`` attribute in FT.INFO ``attributes`` (RediSearch says
    ``dim``, valkey-search ``dimensions`` inside a nested ``index`` list; RESP2 or 3)."""

    def text(v: Any) -> Any:
        return v.decode() if isinstance(v, bytes) else v

    def search(n: Any) -> int | None:
        if isinstance(n, dict):
            n = [x for kv in n.items() for x in kv]
        if not isinstance(n, (list, tuple)):
            return None
        for i in range(len(n) - 1):
            if text(n[i]) in ("dim", "dimensions", "DIM"):
                try:
                    return int(text(n[i + 1]))
                except (TypeError, ValueError):
                    pass
        for child in n:
            found = search(child)
            if found is not None:
                return found
        return None

    for attr in node or []:
        flat = [x for kv in attr.items() for x in kv] if isinstance(attr, dict) else attr
        names = {text(x) for x in flat if isinstance(x, (str, bytes))}
        if "vec" in names:
            return search(flat)
    return None


def _as_index(result: Any) -> int | None:
    if result is None or isinstance(result, bool):
        return None
    return int(result)
