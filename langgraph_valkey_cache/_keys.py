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

import hashlib
from urllib.parse import quote, unquote

__all__ = [
    "CheckpointKeys",
    "KeySpace",
    "LLMCacheKeys",
    "decode",
    "digest",
    "encode",
    "glob_escape",
    "validate_prefix",
]

_SAFE = "-_.~"
_GLOB_SPECIAL = set("*?[]\\")


def encode(part: str) -> str:
    """Percent-encode one key part (injective, separator- and glob-free)."""
    if not isinstance(part, str):
        raise TypeError(f"key parts must be str, got {type(part).__name__}")
    return quote(part, safe=_SAFE)


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
    - ``P:{T}:runs``       HASH run_id -> ``ns/id`` list (for ``delete_for_runs``)
    - ``P:{T}:i:<ns>``     ZSET of checkpoint ids, all score 0 (lexicographic = time order)
    - ``P:{T}:c:<ns>``     HASH id -> checkpoint record
    - ``P:{T}:b:<ns>``     HASH ``<channel>:<version>`` -> blob
    - ``P:{T}:w:<ns>``     HASH ``<id>:<task>:<idx>`` -> pending write
    - ``P:{T}:d:<ns>``     HASH id -> comma-joined write fields of that checkpoint

    The Lua scripts derive the per-namespace keys from the thread base ``P:{T}:``
    and the encoded namespace, so these names are defined here and in
    ``_scripts.py``'s ``nskey`` helper only.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self.marker_pattern = glob_escape(prefix) + ":{*}:ns"

    def base(self, thread_id: str) -> str:
        return f"{self.prefix}:{{{encode(thread_id)}}}:"

    def marker(self, thread_id: str) -> str:
        return self.base(thread_id) + "ns"

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


class LLMCacheKeys:
    """Keys of the LLM caches (exact, semantic) and of :class:`ValkeyByteStore`.

    Under prefix ``P`` (prompts and llm strings only ever appear hashed):

    - ``P:x:<M>:<E>``  STRING, exact entry; ``M = digest(llm_string)``,
      ``E = digest(llm_string, prompt)`` (length-prefixed, so no ``prompt + llm_string``
      collision). ``P:x:<M>:*`` is one model's entries (invalidate by model).
    - ``P:s:<F>:<E>``  HASH, semantic entry; ``F`` is the filter tag (llm string plus
      conversation context), ``E = digest(F, embedded text)``. ``P:idx`` is the FT index
      over the ``P:s:`` key prefix.
    - ``P:b:<encoded key>``  ByteStore value (key percent-encoded, so the caller's key
      never widens a SCAN pattern).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)
        self._glob_prefix = glob_escape(prefix)

    @staticmethod
    def model_digest(llm_string: str) -> str:
        return digest("llm", llm_string)

    def exact(self, llm_string: str, prompt: str) -> str:
        return f"{self.prefix}:x:{self.model_digest(llm_string)}:{digest(llm_string, prompt)}"

    def exact_pattern(self, llm_string: str | None = None) -> str:
        if llm_string is None:
            return f"{self._glob_prefix}:x:*"
        return f"{self._glob_prefix}:x:{self.model_digest(llm_string)}:*"

    def semantic(self, tag: str, text: str) -> str:
        return f"{self.prefix}:s:{tag}:{digest(tag, text)}"

    def semantic_key_prefix(self) -> str:
        """The FT.CREATE ``PREFIX`` (a literal string, not a glob)."""
        return f"{self.prefix}:s:"

    def semantic_pattern(self) -> str:
        return f"{self._glob_prefix}:s:*"

    def index(self) -> str:
        return f"{self.prefix}:idx"

    def blob(self, key: str) -> str:
        return f"{self.prefix}:b:{encode(key)}"

    def blob_pattern(self, key_prefix: str | None = None) -> str:
        return f"{self._glob_prefix}:b:{encode(key_prefix or '')}*"

    def blob_from_key(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return decode(text[len(self.prefix) + 3 :])
