"""``ValkeySemanticCache``: an LLM cache that also answers paraphrases, on valkey-search.

Each entry is a HASH ``<prefix>:s:<model digest>:<entry digest>`` with

- ``llm``  TAG: digest of the ``llm_string`` plus the conversation context (see below),
- ``vec``  FLOAT32 vector of the embedded text (COSINE),
- ``text`` the embedded text (what a judge/reranker compares), ``gens`` the generations
  (``langchain_core.load.dumps``, read back with an allowlist, as in :class:`ValkeyCache`).

A lookup is one FT.SEARCH, pre-filtered by the TAG so an answer never crosses models,
parameters, bound tools, system prompts or earlier turns (``EF_RUNTIME`` always explicit
for HNSW, see :func:`~langgraph_valkey_cache._search.knn_command`)::

    (@llm:{<tag>})=>[KNN k @vec $B EF_RUNTIME ef AS dist]   PARAMS 2 B <bytes>   DIALECT 2

What is embedded (``embed="last_user"``, the default) is the text of the conversation's
last user turn; every other message (system prompt, earlier turns, and any AI/tool
messages after that user turn) goes into the TAG digest, so two conversations that differ
anywhere else never share an answer, and an agent's follow-up call after a tool result
never gets the answer of its first call. ``embed="prompt"`` embeds the whole prompt string.

A candidate at cosine distance ``d`` (``1 - cos``, as the server returns it) is a hit when
``d <= threshold``. With a ``judge`` or ``rerank`` callable, candidates with
``threshold < d <= threshold + band`` are decided by it (sync or async callables, with a
timeout; ``on_judge_error`` picks what a failure means). Observed distances feed
:meth:`ValkeySemanticCache.threshold_effectiveness`.

Every operation is one I/O-free plan (see ``_failopen``): its server steps, its embedding
and judge calls (:class:`~langgraph_valkey_cache._failopen.Call`) and its counts, run by
the sync or the async executor; nothing here is written twice.
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

from langgraph_valkey_cache._cachebase import CacheCore
from langgraph_valkey_cache._client import CACHE_TIMEOUT, cache_client_from_url
from langgraph_valkey_cache._failopen import (
    BYPASS,
    CacheUnavailable,
    Call,
    Cmd,
    Pipe,
    Plan,
    Scan,
    Sleep,
    Tally,
)
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, LLMCacheKeys
from langgraph_valkey_cache._prices import DEFAULT_PRICER, Pricer, PriceTable, fresh_tally
from langgraph_valkey_cache._search import (
    INDEX_WAIT_SECONDS,
    NoCoordinator,
    SearchModuleMissing,
    escape_tag,
    hnsw_ef_runtime,
    is_index_exists_error,
    is_unknown_command_error,
    knn_command,
    pack_vector,
    parse_info,
    parse_search,
)
from langgraph_valkey_cache.cache.llm import (
    LLMCacheCodec,
    LLMRequest,
    project_messages,
    tally_generations,
    unlink_plan,
)
from langgraph_valkey_cache.embeddings import CachedEmbeddings, ValkeyByteStore, default_namespace

__all__ = ["SemanticQuery", "ValkeySemanticCache", "split_prompt"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

Judge = Callable[[str, str], "bool | Awaitable[bool]"]
Rerank = Callable[[str, list[str]], "int | None | Awaitable[int | None]"]

_STEP = Decimal("0.0001")
_RETURNED = ("text", "gens")
_threshold_override: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "valkey_semantic_threshold", default=None
)


# -- prompt -> (embedded text, context) : pure --------------------------------------------


def _is_human(message: dict[str, Any]) -> bool:
    kind = message.get("type")
    return kind == "human" or (kind == "chat" and message.get("role") == "user")


def split_prompt(
    prompt: str, mode: Literal["last_user", "prompt"] = "last_user"
) -> tuple[str, str]:
    """``(text to embed, context)`` of a cache prompt.

    A chat prompt (LangChain's JSON dump of the messages) is first projected to what
    the provider sees (:func:`~langgraph_valkey_cache.cache.llm.project_messages`: no
    ids, usage or response metadata, so an agent replay finds its entries). In
    ``last_user`` mode, the text is the last human message's text and the context a
    canonical JSON of everything else: the messages before and after it, that
    message's other fields and its non-text content blocks (images...). Other prompts
    are embedded whole with an empty context.
    """
    if mode == "prompt":
        return prompt, ""
    messages = project_messages(prompt)
    if messages is None:
        return prompt, ""
    last = next((i for i in range(len(messages) - 1, -1, -1) if _is_human(messages[i])), None)
    if last is None:
        return prompt, ""
    turn = dict(messages[last])
    content = turn.pop("content", "")
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
        {"before": messages[:last], "after": messages[last + 1 :], "turn": turn, "blocks": extra},
        sort_keys=True,
        separators=(",", ":"),
    )
    return text, context


@dataclass(frozen=True)
class SemanticQuery:
    """One prepared lookup (no I/O yet). ``tag`` is the TAG it is filtered by
    (:meth:`~langgraph_valkey_cache._keys.LLMCacheKeys.semantic_tag`)."""

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


class ValkeySemanticCache(CacheCore, BaseCache):
    """Semantic LLM cache on Valkey with valkey-search (FT.* vector index).

    Args:
        client: a sync or async valkey-py client, standalone or cluster (or both, with
            ``async_client=``).
        embeddings: a LangChain ``Embeddings``; its vectors are cached in Valkey
            (``cache_embeddings=True``) so a repeated text is embedded once.
        prefix: key prefix (and index name ``<prefix>:idx``).
        distance_threshold: cosine distance (``1 - cos``) at or below which a candidate hits.
        ttl: seconds each entry lives; ``None`` keeps entries.
        embed: ``"last_user"`` (default) or ``"prompt"`` (see the module docs).
        dims: vector dimensions; ``None`` asks the embedder once at setup.
        algorithm: ``"HNSW"`` (default) or ``"FLAT"``.
        ef_runtime: HNSW ``EF_RUNTIME`` of every search (default: see
            :func:`~langgraph_valkey_cache._search.hnsw_ef_runtime`); always sent for HNSW.
        cache_embeddings: keep query vectors in a :class:`ValkeyByteStore` under
            ``<prefix>:emb``.
        embeddings_namespace: names the embedding model (default:
            :func:`~langgraph_valkey_cache.embeddings.default_namespace`: its class and
            model fields). It and the dimensions are part of every entry's TAG, so a
            lookup never compares vectors of another model; it also separates the
            cached query vectors. Pass your own id when a model's settings change its
            vectors without changing those fields.
        scope: names looked up in the run's ``configurable`` (e.g. ``("user_id",)``)
            whose values become part of the TAG: never an answer across scopes; a run
            without a value bypasses the cache (one warning).
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
        cost_of: ``cost_of(generations) -> USD``: what a hit saved, instead of the
            price of the cached response's tokens (``prices=`` / genai-prices).
        prices: per-model token prices overriding genai-prices' (see ``ValkeyCache``).
        timeout: the latency budget of one server step in seconds (async: a deadline
            whatever the client; sync: the client's socket timeout, which
            :func:`~langgraph_valkey_cache.cache_client_from_url` sets to the budget).
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`;
            the embedding cache's own counts go to ``<prefix>:emb:stats`` likewise).

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> cache = ValkeySemanticCache(client, OpenAIEmbeddings(), distance_threshold=0.1)
        >>> cache.setup()  # doctest: +SKIP
        >>> set_llm_cache(cache)  # doctest: +SKIP

    Whatever goes wrong with the server (down, stalled, no search module, index dropped),
    a lookup is a miss and an update a no-op within the budget, and the model is called;
    while the server's breaker (shared by every cache on it, the embedding cache included)
    is open, a lookup neither touches the server nor embeds anything. :meth:`setup`
    raises :class:`SearchModuleMissing` on a server without the search module;
    ``clear`` and ``drop_index`` raise on errors.
    """

    def __init__(
        self,
        client: Any = None,
        embeddings: Embeddings | None = None,
        *,
        async_client: Any = None,
        prefix: str = DEFAULT_PREFIXES["semantic"],
        distance_threshold: float = 0.1,
        ttl: float | None = None,
        embed: Literal["last_user", "prompt"] = "last_user",
        dims: int | None = None,
        algorithm: Literal["HNSW", "FLAT"] = "HNSW",
        ef_runtime: int | None = None,
        cache_embeddings: bool = True,
        embeddings_namespace: str | None = None,
        scope: Sequence[str] | str | None = None,
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
        timeout: float = CACHE_TIMEOUT,
        stats_flush_interval: float = 1.0,
        prices: PriceTable | None = None,
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
        if judge_timeout <= 0:
            raise ValueError("judge_timeout must be a positive number of seconds")
        self.codec = LLMCacheCodec(prefix, ttl=ttl, scope=scope)
        self.keys: LLMCacheKeys = self.codec.keys
        self.embedder_id = embeddings_namespace or default_namespace(embeddings)
        self.cost_of = cost_of
        self.pricer = Pricer(prices) if prices else DEFAULT_PRICER
        self._init_core(
            client, async_client, tier="semantic_cache", stats_key=self.keys.stats(),
            metrics=metrics, timeout=timeout, stats_flush_interval=stats_flush_interval,
        )  # fmt: skip
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
        # FLAT rejects EF_RUNTIME; HNSW always gets it (on a cluster, each shard of a
        # fan-out would otherwise search with ef = K and miss paraphrases)
        self.ef_runtime = (
            hnsw_ef_runtime(self.rerank_k, ef_runtime) if algorithm == "HNSW" else None
        )
        self.judge_timeout = judge_timeout
        self.on_judge_error = on_judge_error
        self.embeddings: Embeddings = embeddings
        self.embedding_store: ValkeyByteStore | None = None
        if cache_embeddings:
            self.embedding_store = ValkeyByteStore(
                self.client, async_client=self.aclient, prefix=f"{prefix}:emb", ttl=ttl,
                metrics=metrics, timeout=timeout,
            )  # fmt: skip
            # its counts ride on the same schedule as this cache's
            self.embedding_store.shared_stats.flush_interval = stats_flush_interval
            self.embeddings = CachedEmbeddings(
                embeddings, self.embedding_store, namespace=embeddings_namespace
            )
        self._observations: deque[_Observation] = deque(maxlen=window)
        self._obs_lock = threading.Lock()
        self._ready = False
        self._judge_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_url(  # type: ignore[override]
        cls, url: str, embeddings: Embeddings, **kwargs: Any
    ) -> ValkeySemanticCache:
        """A cache with a sync and an async client built for ``url`` (budget as timeout)."""
        timeout = kwargs.get("timeout", CACHE_TIMEOUT)
        return cls(
            cache_client_from_url(url, timeout=timeout),
            embeddings,
            async_client=cache_client_from_url(url, asyncio=True, timeout=timeout),
            **kwargs,
        )

    @property
    def cluster(self) -> bool:
        return (self._exec or self._aexec).cluster

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
        self,
        prompt: str,
        llm_string: str,
        distance_threshold: float | None = None,
        req: LLMRequest | None = None,
    ) -> SemanticQuery:
        """The lookup of ``prompt`` (the dimensions must be known: ``dims=`` or setup)."""
        if self.dims is None:
            raise ValueError("the embedding dimensions are unknown: pass dims= or call setup()")
        text, context = split_prompt(prompt, self.embed_mode)
        scope = req.scope if req is not None else ()
        space = f"{self.embedder_id}|dims={self.dims}"
        tag = self.keys.semantic_tag(llm_string, context, space, scope or ())
        return SemanticQuery(text, tag, self._threshold_for(text, distance_threshold), llm_string)

    def _create_args(self, dims: int) -> tuple[Any, ...]:
        algo = [self.algorithm, 6, "TYPE", "FLOAT32", "DIM", dims, "DISTANCE_METRIC", "COSINE"]
        return (
            "FT.CREATE", self.keys.index(), "ON", "HASH",
            "PREFIX", 1, self.keys.semantic_key_prefix(),
            "SCHEMA", "llm", "TAG", "vec", "VECTOR", *algo,
        )  # fmt: skip

    def _search_args(self, query: SemanticQuery, vector: Sequence[float]) -> tuple[Any, ...]:
        return tuple(
            knn_command(
                self.keys.index(), "vec", f"@llm:{{{escape_tag(query.tag)}}}", self.rerank_k,
                pack_vector(vector, self.dims), ef_runtime=self.ef_runtime,
                return_fields=_RETURNED,
            )
        )  # fmt: skip

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

    def _observe(self, distance: float | None, threshold: float, outcome: str) -> None:
        with self._obs_lock:
            self._observations.append(_Observation(distance, threshold, outcome))

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
            self._observe(best.distance, query.threshold, "hit" if gens is not None else "miss")
            return gens, []
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
            self._observe(band[0].distance, query.threshold, outcome)
            return None
        picked = band[choice]
        self._observe(picked.distance, query.threshold, outcome)
        return self.codec.decode(picked.gens)

    def _check_existing(self, info: Any) -> None:
        found = _vector_dim(parse_info(info).get("attributes"))
        if found is not None and self.dims is not None and found != self.dims:
            raise ValueError(
                f"index {self.keys.index()!r} holds {found}-dimensional vectors but the "
                f"embeddings give {self.dims}: use another prefix for this model"
            )

    # -- plans (no I/O) -----------------------------------------------------------------

    def _plan_dims(self) -> Plan:
        if self.dims is None:
            e = self.embeddings
            self.dims = len((yield Call(e.embed_query, e.aembed_query, ("dimension probe",))))
        return self.dims

    def _plan_setup(self, wait: bool = False) -> Plan:
        """Create the index unless it exists (then check its dimensions). ``wait``
        (explicit ``setup()`` only, never on the fail-open path): on a cluster, until
        every primary has the index, or raise naming the coordinator."""
        index = self.keys.index()
        # FT._LIST first: an existing index is the common case, and FT.CREATE's "already
        # exists" would be a loud error on the fail-open path
        names = yield Cmd(("FT._LIST",), node="random")
        exists = index in {n.decode() if isinstance(n, bytes) else n for n in names or ()}
        yield from self._plan_dims()
        if exists:
            self._check_existing((yield Cmd(("FT.INFO", index), node="random")))
        else:
            yield Cmd(self._create_args(self.dims or 0), node="random")
        if wait and self.cluster:
            yield from self._plan_wait_everywhere(index)
        self._ready = True

    def _plan_wait_everywhere(self, index: str, seconds: float = INDEX_WAIT_SECONDS) -> Plan:
        """FT.INFO is per node: the coordinator creates the index on every primary a
        moment after FT.CREATE; without the coordinator it never does."""
        deadline = time.monotonic() + seconds
        while True:
            infos = yield Cmd(("FT.INFO", index), node="primaries")
            missing = sum(isinstance(i, Exception) for i in infos)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise NoCoordinator(index, missing, len(infos))
            yield Sleep(0.05)

    def _plan_ready(self) -> Plan:
        """Before anything is embedded: is the server worth it, and is the index there?"""
        if not self.breaker.closed:
            # a recent failure: this PING is refused at once during the cooldown (no
            # embedding spent on a lookup that cannot run) or is the breaker's probe
            yield Cmd(("PING",), node="random")
        if not self._ready:
            yield from self._plan_setup()

    def _plan_embed(self, texts: list[str]) -> Plan:
        e = self.embeddings
        if isinstance(e, CachedEmbeddings):  # one read of every cached vector
            return (yield Call(e.embed_queries, e.aembed_queries, (texts,)))
        vectors = []
        for t in texts:
            vectors.append((yield Call(e.embed_query, e.aembed_query, (t,))))
        return vectors

    def _plan_search(self, queries: Sequence[SemanticQuery]) -> Plan:
        """The FT.SEARCH replies of ``queries`` (setup first when needed)."""
        yield from self._plan_ready()
        vectors = yield from self._plan_embed([q.text for q in queries])
        cmds = [self._search_args(q, v) for q, v in zip(queries, vectors, strict=True)]
        try:
            if len(cmds) == 1:
                return [(yield Cmd(cmds[0], node="random"))]
            # FT.* carry no key: on a cluster all go to one node (it fans out)
            return (yield Pipe(tuple(cmds), node="random"))
        except CacheUnavailable as exc:
            if exc.reason == "no_index":  # dropped under us: recreate on the next call
                self._ready = False
            raise

    def _plan_judge(self, query: SemanticQuery, band: list[_Candidate]) -> Plan:
        texts = [c.text for c in band]
        try:
            choice = yield Call(self._judge_blocking, self._ajudge, (query.text, texts))
        except Exception as exc:
            self._judge_failed(exc)
            return self._settle(query, band, None, error=True)
        return self._settle(query, band, choice, error=False)

    def _plan_check(self, queries: Sequence[SemanticQuery]) -> Plan:
        replies = yield from self._plan_search(queries)
        found: list[list[Generation] | None] = []
        for query, reply in zip(queries, replies, strict=True):
            gens, band = self._decide(query, self._candidates(reply))
            if band:
                gens = yield from self._plan_judge(query, band)
            found.append(gens)
        llm_strings = [q.llm_string for q in queries]
        yield tally_generations(found, self.cost_of, self.pricer, llm_strings)
        return found

    def _plan_lookup(
        self,
        prompt: str,
        llm_string: str,
        req: LLMRequest | None = None,
        distance_threshold: float | None = None,
    ) -> Plan:
        """One lookup (the interface the middleware drives, shared with ``ValkeyCache``);
        ``req`` defaults to the current run's (:meth:`LLMCacheCodec.request`)."""
        if req is None:
            req = self.codec.request(self)
        if not req.reads:  # skipped, refreshed or unscoped: not a lookup
            yield BYPASS
            return None
        yield from self._plan_ready()  # the dimensions are part of the TAG
        query = self.prepare(prompt, llm_string, distance_threshold, req)
        (gens,) = yield from self._plan_check([query])
        return gens

    def _plan_check_batch(
        self,
        prompts: Sequence[str],
        llm_string: str,
        distance_threshold: float | None,
        req: LLMRequest,
    ) -> Plan:
        if not req.reads:
            yield Tally(bypassed=len(prompts))
            return [None] * len(prompts)
        yield from self._plan_ready()
        queries = [self.prepare(p, llm_string, distance_threshold, req) for p in prompts]
        return (yield from self._plan_check(queries))

    def _plan_update(
        self,
        prompt: str,
        llm_string: str,
        return_val: RETURN_VAL_TYPE,
        req: LLMRequest | None = None,
    ) -> Plan:
        if req is None:
            req = self.codec.request(self)
        if not req.writes:
            return
        value = self.codec.encode(return_val)
        yield from self._plan_ready()
        query = self.prepare(prompt, llm_string, req=req)
        key = self.keys.semantic(llm_string, query.tag, query.text)
        (vector,) = yield from self._plan_embed([query.text])
        vec = pack_vector(vector, self.dims)
        hset = (
            "HSET", key, "llm", query.tag, "vec", vec, "text", query.text, "gens", value,
            "ts", f"{time.time():.3f}",
        )  # fmt: skip
        ttl_ms = self.codec.entry_ttl_ms(req)
        if ttl_ms is None and req.control.refresh:
            # HSET keeps an existing key's TTL: a refreshed entry is written as new
            yield Pipe((hset, ("PERSIST", key)))
        elif ttl_ms is None:
            yield Cmd(hset)
        else:
            # one round trip to the key's node, no MULTI (cluster pipelines refuse it) and
            # no Lua (valkey-search indexes a script's write late on a cluster); PEXPIRE is
            # not refused under OOM, so it follows whenever the HSET succeeded
            yield Pipe((hset, ("PEXPIRE", key, ttl_ms)))
        # the miss path sees the fresh response: what the provider's prompt cache did
        stored = len(value) + len(vec)
        yield fresh_tally(return_val, llm_string, self.pricer, stored_bytes=stored)

    def _plan_nearest(self, prompt: str, llm_string: str) -> Plan:
        yield from self._plan_ready()
        req = self.codec.request(self)
        (reply,) = yield from self._plan_search([self.prepare(prompt, llm_string, req=req)])
        cands = self._candidates(reply)
        return cands[0].distance if cands else None

    def _plan_clear(self, llm_string: str | None) -> Plan:
        keys = yield Scan(self.keys.semantic_pattern(llm_string))
        yield from unlink_plan(keys, self.cluster)

    def _plan_drop_index(self) -> Plan:
        self._ready = False
        yield Cmd(("FT.DROPINDEX", self.keys.index()), node="random")

    # -- setup --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _strict_errors(self) -> Iterator[None]:
        """What a failed strict plan that may set up means to the caller (its errors
        arrive raw): no search module, or an index another process just created."""
        try:
            yield
        except Exception as exc:
            if is_unknown_command_error(exc):
                raise SearchModuleMissing("ValkeySemanticCache") from exc
            if not is_index_exists_error(exc):
                raise
            self._ready = True  # another process created it between FT._LIST and FT.CREATE

    def setup(self) -> None:
        """Create the FT index (idempotent). Raises ``SearchModuleMissing`` without the
        search module and ``ValueError`` when the existing index has other dimensions."""
        with self._strict_errors():
            self._run_strict(self._plan_setup(wait=True), "setup")

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        with self._strict_errors():
            await self._arun_strict(self._plan_setup(wait=True), "setup")

    def drop_index(self) -> None:
        """Drop the FT index (entries stay; ``clear()`` removes them). Raises on errors."""
        self._run_strict(self._plan_drop_index(), "drop_index")

    async def adrop_index(self) -> None:
        """Async :meth:`drop_index`."""
        await self._arun_strict(self._plan_drop_index(), "drop_index")

    # -- judge / rerank (the two forms of one dependency call) --------------------------

    def _judge_target(self, text: str, texts: list[str]) -> tuple[Callable[..., Any], tuple]:
        if self.rerank is not None:
            return self.rerank, (text, texts)
        assert self.judge is not None
        return self.judge, (text, texts[0])

    def _choice(self, result: Any) -> int | None:
        if self.rerank is not None:
            return None if result is None or isinstance(result, bool) else int(result)
        return 0 if result else None

    def _ask(self, text: str, texts: list[str]) -> int | None:
        fn, args = self._judge_target(text, texts)
        result = fn(*args)
        if inspect.isawaitable(result):  # an async judge from the sync API (its own loop)
            result = asyncio.run(_awaited(result))
        return self._choice(result)

    def _judge_blocking(self, text: str, texts: list[str]) -> int | None:
        """Sync form: the judge runs in a worker thread, so its timeout holds even when
        it blocks (its context variables come along)."""
        if self._judge_pool is None:
            with self._pool_lock:
                if self._judge_pool is None:
                    self._judge_pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=4, thread_name_prefix="valkey-semantic-judge"
                    )
        future = self._judge_pool.submit(contextvars.copy_context().run, self._ask, text, texts)
        try:
            return future.result(timeout=self.judge_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    async def _ajudge(self, text: str, texts: list[str]) -> int | None:
        """Async form: a coroutine judge is awaited, a sync one runs in a thread (it may
        block on a model call), both under ``judge_timeout``."""
        fn, args = self._judge_target(text, texts)

        async def call() -> Any:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args)
            result = await asyncio.to_thread(fn, *args)
            return (await result) if inspect.isawaitable(result) else result

        return self._choice(await asyncio.wait_for(call(), self.judge_timeout))

    def _judge_failed(self, exc: BaseException) -> None:
        timed_out = isinstance(exc, (TimeoutError, asyncio.TimeoutError))
        what = f"timed out after {self.judge_timeout:g}s" if timed_out else _describe(exc)
        policy = "a hit on the nearest candidate" if self.on_judge_error == "hit" else "a miss"
        logger.warning("semantic cache judge %s; treated as %s (on_judge_error)", what, policy)
        self.telemetry.error("judge", "timeout" if timed_out else "error")

    # -- BaseCache ----------------------------------------------------------------------

    def lookup(
        self, prompt: str, llm_string: str, *, distance_threshold: float | None = None
    ) -> RETURN_VAL_TYPE | None:
        req = self.codec.request(self)  # before the plan: a bad cache_control raises
        plan = self._plan_lookup(prompt, llm_string, req, distance_threshold)
        return self._run(plan, "lookup", lookups=1)

    async def alookup(
        self, prompt: str, llm_string: str, *, distance_threshold: float | None = None
    ) -> RETURN_VAL_TYPE | None:
        req = self.codec.request(self)
        plan = self._plan_lookup(prompt, llm_string, req, distance_threshold)
        return await self._arun(plan, "lookup", lookups=1)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        plan = self._plan_update(prompt, llm_string, return_val, self.codec.request(self))
        self._run(plan, "update")

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        plan = self._plan_update(prompt, llm_string, return_val, self.codec.request(self))
        await self._arun(plan, "update")

    def clear(self, **kwargs: Any) -> None:
        """Delete this cache's entries (``llm_string=...``: one model's); keeps the index
        and the embedding cache. Raises on errors."""
        self._run_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    async def aclear(self, **kwargs: Any) -> None:
        await self._arun_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    def invalidate_model(self, llm_string: str) -> None:
        """Delete every entry cached for this model configuration."""
        self.clear(llm_string=llm_string)

    async def ainvalidate_model(self, llm_string: str) -> None:
        await self.aclear(llm_string=llm_string)

    def check_batch(
        self, prompts: Sequence[str], llm_string: str, *, distance_threshold: float | None = None
    ) -> list[list[Generation] | None]:
        """Look up many prompts: one read of the cached vectors and one pipelined round
        trip of searches (one search per round trip on a cluster)."""
        plan = self._plan_check_batch(
            prompts, llm_string, distance_threshold, self.codec.request(self)
        )
        n = len(prompts)
        return self._run(plan, "check_batch", default=[None] * n, lookups=n) if n else []

    async def acheck_batch(
        self, prompts: Sequence[str], llm_string: str, *, distance_threshold: float | None = None
    ) -> list[list[Generation] | None]:
        """Async :meth:`check_batch`."""
        plan = self._plan_check_batch(
            prompts, llm_string, distance_threshold, self.codec.request(self)
        )
        n = len(prompts)
        return await self._arun(plan, "check_batch", default=[None] * n, lookups=n) if n else []

    def nearest(self, prompt: str, llm_string: str) -> float | None:
        """The cosine distance of the nearest entry this prompt could hit (diagnostics:
        raises on errors, :class:`SearchModuleMissing` without the search module)."""
        with self._strict_errors():
            return self._run_strict(self._plan_nearest(prompt, llm_string), "nearest")
        return None  # the index appeared meanwhile (created by another process)

    async def anearest(self, prompt: str, llm_string: str) -> float | None:
        """Async :meth:`nearest`."""
        with self._strict_errors():
            return await self._arun_strict(self._plan_nearest(prompt, llm_string), "nearest")
        return None  # the index appeared meanwhile (created by another process)

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
        accepted them (the only ground truth the cache sees). ``edge_hit_rate`` is
        ``None`` when nothing hit.
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
        edge_rate = round(len(edge_hits) / len(hits), 4) if hits else None
        dists = sorted(o.distance for o in obs if o.distance is not None)
        report.update(
            hit_rate=round((len(hits) + len(accepted)) / len(obs), 4),
            near_miss_rate=round(len(near) / len(obs), 4),
            edge_hit_rate=edge_rate,
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
        # what the hits say, in words that are true when there are none
        if not hits:
            about_hits = "no lookup hit"
        elif edge_rate is not None and edge_rate < 0.5:
            about_hits = "hits sit well inside it"
        else:
            about_hits = "many hits are close to it"
        if report["near_miss_rate"] >= 0.2 and (edge_rate is None or edge_rate < 0.5):
            report["recommendation"] = "loosen"
            report["suggested_threshold"] = _round_up(sorted(near)[int(0.5 * (len(near) - 1))])
            reasons.append(
                f"{report['near_miss_rate']:.0%} of lookups missed within {margin:.3f} of "
                f"the threshold while {about_hits}: likely paraphrases being missed "
                "(verify with a judge before loosening in production)"
            )
        elif edge_rate is not None and edge_rate >= 0.5 and len(hits) >= 10:
            report["recommendation"] = "tighten"
            report["suggested_threshold"] = _round_down(threshold * 0.8)
            reasons.append(
                f"{edge_rate:.0%} of hits are in the top 20% of the threshold: "
                "many answers are served from borderline matches"
            )
        elif not hits:
            reasons.append("no lookup hit and few missed narrowly: nothing to tune yet")
        else:
            reasons.append(f"{about_hits} and few lookups miss narrowly")
        return report

    # -- lifecycle ----------------------------------------------------------------------

    def flush_stats(self) -> None:
        """Write this process's pending counts (this cache's and its embedding cache's)."""
        super().flush_stats()
        if self.embedding_store is not None:
            self.embedding_store.flush_stats()

    async def aflush_stats(self) -> None:
        await super().aflush_stats()
        if self.embedding_store is not None:
            await self.embedding_store.aflush_stats()

    def close(self) -> None:
        """Stop the judge pool, flush the pending stats and close the sync client."""
        if self._judge_pool is not None:
            self._judge_pool.shutdown(wait=False)
        super().close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _describe(exc: BaseException) -> str:
    """``failed (Type: message)``, never an empty message (a bare TimeoutError has none)."""
    text = str(exc) or repr(exc)
    return f"failed ({type(exc).__name__}: {text})"


def _round_up(distance: float) -> float:
    """``distance`` rounded up to 4 decimals: a threshold suggested from an observed
    distance must still let that distance hit (``d <= threshold``)."""
    return float(Decimal(repr(distance)).quantize(_STEP, rounding=ROUND_CEILING))


def _round_down(distance: float) -> float:
    """``distance`` rounded down to 4 decimals (a tightened threshold stays tighter)."""
    return float(Decimal(repr(distance)).quantize(_STEP, rounding=ROUND_FLOOR))


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
