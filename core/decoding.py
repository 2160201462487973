"""Generated token ids -> text, without a character cut in half at the token limit.

A call that stops at max_new_tokens can stop inside a multi-byte character: an emoji is 4
UTF-8 bytes, often 2-3 byte-level tokens. The tokenizer decodes the bytes it has to one
U+FFFD, which would end the summary. `decode_generated` drops that one, and only that one:
a U+FFFD the model wrote in full (the bytes EF BF BD) is text, and stays.

Whether the last character is cut is read from the bytes the last tokens stand for: the
byte-level alphabet (GPT-2, Qwen, SmolLM2) or byte-fallback tokens such as <0xF0>
(SentencePiece). With any other decoder the text is returned as the tokenizer decoded it.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from typing import Optional, Sequence

REPLACEMENT = "\ufffd"
_KINDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# the second byte a lead byte allows where it is not the usual 80..BF (UTF-8, RFC 3629)
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def decode_generated(tokenizer, ids: Sequence[int]) -> str:
    """The continuation's text: special tokens dropped, a trailing cut character dropped, stripped."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.endswith(REPLACEMENT) and ends_mid_character(tokenizer, ids):
        text = text[:-1]  # the cut character's bytes decode to exactly one U+FFFD
    return text.strip()


def ends_mid_character(tokenizer, ids: Sequence[int]) -> bool:
    """True when the ids' bytes end with the first 1-3 bytes of a multi-byte UTF-8 character."""
    tail = _tail_bytes(tokenizer, ids)
    return tail is not None and _incomplete(tail)


def _incomplete(tail: bytes) -> bool:
    i = len(tail) - 1
    while i >= 0 and len(tail) - i <= 3 and 0x80 <= tail[i] < 0xC0:  # continuation bytes
        i -= 1
    if i < 0:
        return False
    lead, have = tail[i], len(tail) - i
    need = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    if have >= need:  # complete, or not a lead byte at all (invalid bytes, not a cut)
        return False
    low, high = _SECOND_BYTE.get(lead, (0x80, 0xBF))
    return have == 1 or low <= tail[i + 1] <= high


def _tail_bytes(tokenizer, ids: Sequence[int], want: int = 4) -> Optional[bytes]:
    """The last `want` (or more) bytes the non-special ids stand for; None if unknown."""
    kind = _decoder_kind(tokenizer)
    if kind is None:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = b""
    for token_id in reversed(ids):
        if token_id in special:
            continue
        piece = _token_bytes(tokenizer.convert_ids_to_tokens(token_id), kind)
        if piece is None:
            return None
        out = piece + out
        if len(out) >= want:
            break
    return out


def _token_bytes(token, kind: str) -> Optional[bytes]:
    if not isinstance(token, str):
        return None
    if kind == "byte_level":
        table = _byte_level_decoder()
        return bytes(table[c] for c in token) if all(c in table for c in token) else token.encode("utf-8")
    match = _BYTE_TOKEN.fullmatch(token)
    return bytes([int(match[1], 16)]) if match else token.replace("\u2581", " ").encode("utf-8")


def _decoder_kind(tokenizer) -> Optional[str]:
    """byte_level, byte_fallback or None, from the fast tokenizer's decoder (cached)."""
    try:
        return _KINDS[tokenizer]
    except (KeyError, TypeError):
        pass
    kind = None
    try:
        state = json.loads(tokenizer.backend_tokenizer.decoder.__getstate__())
        types = [d.get("type") for d in state.get("decoders", [state])] if state else []
        kind = "byte_level" if "ByteLevel" in types else "byte_fallback" if "ByteFallback" in types else None
    except Exception:  # a slow tokenizer, no decoder: decode as is
        kind = None
    try:
        _KINDS[tokenizer] = kind
    except TypeError:
        pass
    return kind


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: each byte-level alphabet character -> its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars
