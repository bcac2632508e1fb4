"""The key schema of every tier, in one place.

Every user string that reaches a key name goes through :func:`encode`, a
percent-encoding that leaves only ``[A-Za-z0-9-_.~]`` readable. The encoding is
injective and never yields ``{ } : , * ? [ ] \\`` or whitespace, so

* a part can never close a ``{hash tag}`` early or split into two parts,
* ``SCAN MATCH`` patterns built from encoded parts cannot be widened by the input,
* separators (``:`` between parts, ``,`` inside lists) stay unambiguous.

Keys that belong together (all keys of one checkpoint thread) share a hash tag so
that Lua scripts touching them run on one shard of a cluster.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote

__all__ = [
    "CheckpointKeys",
    "KeySpace",
    "StoreKeys",
    "LLMCacheKeys",
    "decode",
    "digest",
    "encode",
    "glob_escape",
    "validate_prefix",
]

_SAFE = "-_.~"
_GLOB_SPECIAL = set("*?[]\\")
# exactly the characters ``quote(safe=_SAFE)`` leaves alone: such a part encodes to itself
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


@functools.lru_cache(maxsize=4096)
def _quote(part: str) -> str:
    try:
        return quote(part, safe=_SAFE)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{part!r} cannot be stored in a key: it is not valid Unicode text "
            f"(a lone surrogate at position {exc.start})"
        ) from None


def encode(part: str) -> str:
    """Percent-encode one key part (injective, separator- and glob-free).

    A part made only of ``[A-Za-z0-9_.~-]`` (UUIDs, versions, most names) is its own
    encoding and is returned as is; others are quoted once and memoised (the hot
    path sees the same channel and namespace names on every call). A string that is
    not valid Unicode (a lone surrogate) raises ``ValueError``.
    """
    if not isinstance(part, str):
        raise TypeError(f"key parts must be str, got {type(part).__name__}")
    if _PLAIN(part):
        return part
    return _quote(part)


@functools.lru_cache(maxsize=4096)
def decode(part: str) -> str:
    """Invert :func:`encode`."""
    return unquote(part)


def glob_escape(text: str) -> str:
    """Escape glob metacharacters so ``text`` matches itself in ``SCAN MATCH``."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


def digest(*parts: str | bytes) -> str:
    """A collision-resistant hex digest of several parts.

    Each part is length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` differ.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def validate_prefix(prefix: str) -> str:
    """Check a user-chosen key prefix.

    A prefix may not contain hash-tag braces (they would change which slot a key
    lands in) and may not be empty.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError("key prefix must be a non-empty string")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"key prefix {prefix!r} must not contain '{{' or '}}'")
    if any(c.isspace() for c in prefix):
        raise ValueError(f"key prefix {prefix!r} must not contain whitespace")
    return prefix


class KeySpace:
    """Keys of one component under ``<prefix>:``.

    ``key("a", "b")`` gives ``<prefix>:a:b`` with each part encoded; ``tagged(t, ...)``
    puts ``t`` in a hash tag so all keys with the same ``t`` share a cluster slot.
    ``pattern(...)`` builds a ``SCAN MATCH`` pattern that can only match this prefix.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._glob_prefix = glob_escape(prefix)

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *(encode(p) for p in parts)])

    def tagged(self, tag: str, *parts: str) -> str:
        return ":".join([self.prefix, "{" + encode(tag) + "}", *(encode(p) for p in parts)])

    def pattern(self, *parts: str) -> str:
        """``<prefix>:<parts>:*`` as a SCAN pattern (parts encoded, prefix escaped)."""
        return ":".join([self._glob_prefix, *(encode(p) for p in parts), "*"])


class CheckpointKeys:
    """Keys of the checkpointer. All keys of a thread carry the ``{thread}`` hash tag.

    Per thread ``T`` (encoded) under prefix ``P``:

    - ``P:{T}:ns``         SET of encoded checkpoint namespaces (also the thread marker)
    - ``P:{T}:runs``       ZSET, all scores 0, members ``<run>,<ns>,<id>`` (run and
                           namespace encoded): one run's checkpoints are one
                           ``ZRANGEBYLEX [<run>, (<run>-`` (``encode`` never yields ``,``)
    - ``P:{T}:t``          short-lived marker: all namespaces' expiry refreshed recently
    - ``P:{T}:x``          HASH indexed metadata pair -> number of checkpoints carrying it
    - ``P:{T}:i:<ns>``     ZSET of checkpoint ids, all score 0 (lexicographic = time order)
    - ``P:{T}:c:<ns>``     HASH id -> checkpoint record
    - ``P:{T}:b:<ns>``     HASH ``<channel>:<version>`` -> blob
    - ``P:{T}:w:<ns>``     HASH ``<id>:<task>:<idx>`` -> pending write
    - ``P:{T}:d:<ns>``     HASH id -> comma-joined write fields of that checkpoint

    The thread index (one hash tag ``{%ix}``, which no encoded thread id can be, as
    :func:`encode` emits ``%`` only before two hex digits), all sorted sets of encoded
    thread ids with score 0:

    - ``P:{%ix}:threads``  every thread
    - ``P:{%ix}:m:<pair>`` threads with a checkpoint whose metadata has this pair
    - ``P:{%ix}:r:<run>``  threads with a checkpoint of this run

    Scripts get these names in ``KEYS`` (:meth:`script_keys`, :meth:`thread_keys`);
    only the scripts that walk a whole thread derive the keys of namespaces they
    discover from ``P:{T}:ns``, with ``_scripts.py``'s ``nskey`` helper (same names).
    """

    NS_KINDS = ("i", "c", "b", "w", "d")

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self.marker_pattern = glob_escape(prefix) + ":{*}:ns"

    def base(self, thread_id: str) -> str:
        return f"{self.prefix}:{{{encode(thread_id)}}}:"

    def marker(self, thread_id: str) -> str:
        return self.base(thread_id) + "ns"

    def thread_keys(self, thread_id: str) -> tuple[str, str, str, str]:
        """``(namespaces set, run index, refresh marker, metadata pair counts)``."""
        base = self.base(thread_id)
        return base + "ns", base + "runs", base + "t", base + "x"

    def script_keys(self, thread_id: str, ns: str) -> tuple[str, ...]:
        """The ``KEYS`` of a one-namespace script: :meth:`thread_keys`, then the
        namespace's ``i, c, b, w, d`` keys (``ns`` already encoded)."""
        base = self.base(thread_id)
        return (
            base + "ns",
            base + "runs",
            base + "t",
            base + "x",
            *(f"{base}{kind}:{ns}" for kind in self.NS_KINDS),
        )

    def index_pattern(self) -> str:
        """``SCAN MATCH`` pattern of every index key of this prefix."""
        return glob_escape(self.prefix) + ":\\{%ix\\}:*"

    def index_threads(self) -> str:
        return f"{self.prefix}:{{%ix}}:threads"

    def index_pair(self, pair: str) -> str:
        """``pair`` as built by the saver (already encoded)."""
        return f"{self.prefix}:{{%ix}}:m:{pair}"

    def index_run(self, run: str) -> str:
        """``run`` already encoded."""
        return f"{self.prefix}:{{%ix}}:r:{run}"

    def thread_from_marker(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        start = len(self.prefix) + 2
        return decode(text[start : text.index("}", start)])

    @staticmethod
    def blob_field(channel: str, version: str | int | float) -> str:
        return encode(channel) + ":" + encode(str(version))

    @staticmethod
    def write_field(checkpoint_id: str, task_id: str, idx: int) -> str:
        return f"{encode(checkpoint_id)}:{encode(task_id)}:{idx}"


# --- cache tiers: node cache, tool cache, single-flight leases (issue 5) ---

# ``%`` followed by a letter never comes out of :func:`encode` (it only emits ``%XX``
# with hex digits), so this suffix cannot collide with an encoded key part.
_LEASE_SUFFIX = ":%lease"


def _hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` as the cluster computes it, or None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def lease_key(key: str) -> str:
    """The single-flight lease key of a value key, in the same cluster slot.

    A key with a hash tag keeps it (the suffix goes at the end); a key without
    braces becomes the hash tag itself, which hashes to the same slot as the key.
    """
    if _hash_tag(key) is not None:
        return key + _LEASE_SUFFIX
    if "{" in key or "}" in key:
        raise ValueError(f"cannot derive a same-slot lease key from {key!r}")
    return "{" + key + "}" + _LEASE_SUFFIX


class NodeCacheKeys:
    """Keys of :class:`~langgraph_valkey_cache.cache.node.ValkeyNodeCache`.

    ``P:n:<ns>:<key>`` where ``<ns>`` is the namespace's parts encoded and joined
    with ``,`` (so ``("a",)`` never matches ``("a", "b")`` and ``()`` is empty).
    A scoped cache's entry is ``P:n:<ns>:<key>:@<scope>``, the scope values encoded and
    joined with ``,`` (``@`` and ``:`` never come out of :func:`encode`, so a scoped key
    never equals an unscoped one or another scope's; a namespace's SCAN pattern still
    covers every scope).
    No hash tag: a graph step's tasks spread over the cluster and MGET goes per slot.
    ``P:stats`` is the HASH of hit/miss counters every process adds to.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._glob_prefix = glob_escape(prefix)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _ns(namespace: tuple[str, ...]) -> str:
        # a graph has few node namespaces, each looked up on every get and set
        return ",".join(encode(p) for p in namespace)

    def entry(self, namespace: tuple[str, ...], key: str, scope: tuple[str, ...] = ()) -> str:
        base = f"{self.prefix}:n:{self._ns(namespace)}:{encode(key)}"
        if not scope:
            return base
        return base + ":@" + ",".join(encode(v) for v in scope)

    def namespace_pattern(self, namespace: tuple[str, ...]) -> str:
        return f"{self._glob_prefix}:n:{self._ns(namespace)}:*"

    def all_pattern(self) -> str:
        return f"{self._glob_prefix}:n:*"

    def stats(self) -> str:
        return f"{self.prefix}:stats"


class ToolCacheKeys:
    """Keys of :class:`~langgraph_valkey_cache.cache.tools.ToolCache` (and ``cached``).

    Under prefix ``P``, for tool (or function) name ``T`` (encoded) and argument
    digest ``D``:

    - ``P:t:{T:D}``         STRING the cached result (serde bytes), TTL set with it
    - ``P:t:{T:D}:%lease``  single-flight lease (same slot, see :func:`lease_key`)
    - ``P:s:T``             HASH stats of the tool: hits, misses, saved_ms, run_ms
    - ``P:p``               HASH tool name -> JSON policy (operator-set TTLs)

    The entry's hash tag is per call, so entries spread over the cluster; a tool's
    entries are found for invalidation with ``SCAN MATCH P:t:{T:*`` per primary.
    ``D`` is :meth:`call_digest`: the tool name, its canonical arguments and, for a scoped
    cache, the scope values and the injected values named in ``key_injected``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._glob_prefix = glob_escape(prefix)

    def entry(self, name: str, args_digest: str) -> str:
        return f"{self.prefix}:t:{{{encode(name)}:{encode(args_digest)}}}"

    @staticmethod
    def call_digest(
        name: str, args_json: str, scope: tuple[str, ...] = (), injected_json: str | None = None
    ) -> str:
        """``D`` of one call. Unscoped calls keep ``digest(name, args)``; scoped ones add
        a tag, the number of scope values, the values and the injected values' canonical
        JSON, all length-prefixed by :func:`digest` (so no two scopes share a digest)."""
        if not scope and injected_json is None:
            return digest(name, args_json)
        return digest(name, args_json, "scoped", str(len(scope)), *scope, injected_json or "")

    def tool_pattern(self, name: str) -> str:
        return f"{self._glob_prefix}:t:{{{encode(name)}:*"

    def all_pattern(self) -> str:
        return f"{self._glob_prefix}:t:*"

    def stats(self, name: str) -> str:
        return f"{self.prefix}:s:{encode(name)}"

    def stats_pattern(self) -> str:
        return f"{self._glob_prefix}:s:*"

    def stats_name(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return decode(text[len(self.prefix) + 3 :])

    def policies(self) -> str:
        return f"{self.prefix}:p"


#: What the agent middleware appends to a model's llm string (tools, tool choice, settings).
AGENT_MARKER = "---agent:"


class LLMCacheKeys:
    """Keys of the LLM caches (exact, semantic) and of :class:`ValkeyByteStore`.

    Under prefix ``P`` (prompts and llm strings only ever appear hashed):

    - ``P:x:<M>:<E>``  STRING, exact entry; ``M = digest(llm_string)``,
      ``E = digest(llm_string, prompt)`` (length-prefixed, so no ``prompt + llm_string``
      collision; a scoped cache adds its ``(name, value)`` pairs after a marker).
      ``P:x:<M>:*`` is one model's entries (invalidate by model).
    - ``P:s:<M>:<E>``  HASH, semantic entry; ``E = digest(F, embedded text)`` where ``F``
      is the filter tag (llm string, conversation context, embedding space and scope: a
      TAG field of the hash, see :meth:`semantic_tag`).
      ``P:s:<M>:*`` is one model's entries. ``P:idx`` is the FT index over ``P:s:``.
    - ``P:b:<encoded key>``  ByteStore value (key percent-encoded, so the caller's key
      never widens a SCAN pattern).
    - ``P:stats``  HASH of hit/miss/cost-saved counters every process adds to (outside
      ``P:s:``, so the FT index never sees it).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._glob_prefix = glob_escape(prefix)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def model_digest(llm_string: str) -> str:
        """``M``: the model part of the llm string only (what precedes
        :data:`AGENT_MARKER`), so ``invalidate_model(model_llm_string)`` also reaches the
        entries the agent middleware wrote with tools and settings appended."""
        return digest("llm", llm_string.split(AGENT_MARKER, 1)[0])

    @staticmethod
    def _scoped(scope: Sequence[tuple[str, str]]) -> tuple[str, ...]:
        # after a "scope" marker, names and values alternate: digest() length-prefixes
        # every part, so any two different scopes (or none) give different digests
        return ("scope", *(part for pair in scope for part in pair)) if scope else ()

    def exact(self, llm_string: str, prompt: str, scope: Sequence[tuple[str, str]] = ()) -> str:
        """``scope``: ``(name, value)`` pairs of a scoped cache (``()``: unscoped)."""
        entry = digest(llm_string, prompt, *self._scoped(scope))
        return f"{self.prefix}:x:{self.model_digest(llm_string)}:{entry}"

    def exact_pattern(self, llm_string: str | None = None) -> str:
        if llm_string is None:
            return f"{self._glob_prefix}:x:*"
        return f"{self._glob_prefix}:x:{self.model_digest(llm_string)}:*"

    def semantic_tag(
        self,
        llm_string: str,
        context: str,
        space: str,
        scope: Sequence[tuple[str, str]] = (),
    ) -> str:
        """``F``, the TAG a semantic lookup is pre-filtered by: the llm string, the
        conversation context, the embedding space (embedder identity and dimensions:
        vectors of another model are never compared) and the scope."""
        return digest("sem", llm_string, context, space, *self._scoped(scope))

    def semantic(self, llm_string: str, tag: str, text: str) -> str:
        return f"{self.prefix}:s:{self.model_digest(llm_string)}:{digest(tag, text)}"

    def semantic_key_prefix(self) -> str:
        """The FT.CREATE ``PREFIX`` (a literal string, not a glob)."""
        return f"{self.prefix}:s:"

    def semantic_pattern(self, llm_string: str | None = None) -> str:
        if llm_string is None:
            return f"{self._glob_prefix}:s:*"
        return f"{self._glob_prefix}:s:{self.model_digest(llm_string)}:*"

    def index(self) -> str:
        return f"{self.prefix}:idx"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def blob(self, key: str) -> str:
        return f"{self.prefix}:b:{encode(key)}"

    def blob_pattern(self, key_prefix: str | None = None) -> str:
        return f"{self._glob_prefix}:b:{encode(key_prefix or '')}*"

    def blob_from_key(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return decode(text[len(self.prefix) + 3 :])


# --- store (issue 4) ---


class StoreKeys:
    """Keys of :class:`~langgraph_valkey_cache.store.ValkeyStore`.

    A namespace ``N`` is written ``E`` = its labels encoded and joined with ``,``
    (injective: :func:`encode` never yields ``,``; prefix matching by whole labels is
    ``E == pre or E.startswith(pre + ",")``). Every key of a namespace carries the
    ``{E}`` hash tag, so the put/delete scripts touch one slot, and namespaces spread
    over a cluster. Under prefix ``P``, per namespace ``E`` and item key ``K`` (encoded):

    - ``P:i:{E}:K``      HASH the item: ``v`` JSON value, ``c``/``u`` created/updated
                         (µs), ``t`` TTL ms (0 = none), ``nv`` vector docs, ``vs`` their space
    - ``P:v-S:{E}:K:j``  HASH vector doc ``j`` of the item (FLOAT32 ``vec``, ``nsp`` TAG,
                         filter copies). ``S`` (the *space*) digests the dimensions and
                         the embedding model, so vectors of another model are never
                         compared; the FT index covers ``P:v-S:`` only
    - ``P:u:{E}``        ZSET item keys by updated time (search without a query)
    - ``P:x:{E}``        ZSET item keys by expiry ms (``inf`` = none): namespace liveness
    - ``P:ns``           ZSET (all scores 0, ordered by member) of every live ``E``: the
                         namespace registry ``list_namespaces`` and prefix search read
    - ``P:idx:<h>``      FT index name, ``h`` a digest of the index configuration

    The scripts build a vector base as ``vpre .. '-' .. S .. vpost`` (see
    :meth:`vector_parts`), so they can drop an item's vectors of an older space.
    """

    def __init__(self, prefix: str, space: str = "") -> None:
        self.prefix = validate_prefix(prefix)
        if space and not space.isalnum():
            raise ValueError(f"vector space {space!r} must be alphanumeric")
        self.space = space
        self.registry = f"{prefix}:ns"
        self.vector_prefix = f"{prefix}:v-{space}:" if space else f"{prefix}:v:"

    @staticmethod
    def ns(namespace: tuple[str, ...]) -> str:
        return ",".join(encode(label) for label in namespace)

    @staticmethod
    def ns_decode(encoded: str) -> tuple[str, ...]:
        return tuple(decode(p) for p in encoded.split(",")) if encoded else ()

    def bases(self, ns: str) -> tuple[str, str, str, str]:
        """``(item base, vector base, updated zset, expiry zset)`` of namespace ``ns``."""
        p = self.prefix
        return (
            f"{p}:i:{{{ns}}}:",
            f"{self.vector_prefix}{{{ns}}}:",
            f"{p}:u:{{{ns}}}",
            f"{p}:x:{{{ns}}}",
        )

    def vector_parts(self, ns: str) -> tuple[str, str]:
        """``(vpre, vpost)``: vector base of space ``S`` is ``vpre-S`` + ``vpost``."""
        return f"{self.prefix}:v", f":{{{ns}}}:"

    def item(self, ns: str, key: str) -> str:
        return f"{self.prefix}:i:{{{ns}}}:{encode(key)}"

    def split_vector(self, vkey: str | bytes) -> tuple[str, str]:
        """``(E, encoded K)`` of a vector doc key ``P:v-S:{E}:K:j``."""
        text = vkey.decode() if isinstance(vkey, bytes) else vkey
        rest = text[len(self.vector_prefix) + 1 :]
        ns, tail = rest.split("}:", 1)
        return ns, tail.rsplit(":", 1)[0]

    def index_name(self, config_digest: str) -> str:
        return f"{self.prefix}:idx:{config_digest[:16]}"


#: Default key prefix of every cache tier, defined once (the CLI's ``stats`` reads them).
DEFAULT_PREFIXES: dict[str, str] = {
    "llm": "lgv:llm",
    "semantic": "lgv:llmsem",
    "node": "lgv:node",
    "tools": "lgv:tools",
    "embeddings": "lgv:emb",
}
