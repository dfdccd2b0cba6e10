"""Ids as the data gives them: integers (MovieLens) or strings of your own (UUIDs, SKUs), one
kind per artifact for users and one for movies. Plain Python: the client, the CLI, the server
and the trainer share these rules without numpy or FAISS."""

from __future__ import annotations

from typing import Literal

Key = int | str  # a user or movie id as the data gave it
IdKind = Literal["int", "str"]
MAX_ID_CHARS = 256  # string ids longer than this are refused (they are stored fixed-width)
_INT64 = range(-(2**63), 2**63)


def as_key(key: Key, kind: IdKind) -> Key | None:
    """``key`` in an id kind: 42 and "42" name the same movie either way; None when it cannot
    be one (a string that is not an integer written plainly where ids are integers: "042",
    "+7" and "1_0" are not 42, 7 and 10; a string over MAX_ID_CHARS or holding NUL, which
    fixed-width storage would cut or strip)."""
    if isinstance(key, int):
        return (key if key in _INT64 else None) if kind == "int" else str(key)
    if len(key) > MAX_ID_CHARS or "\0" in key:
        return None
    if kind == "str":
        return key
    try:
        value = int(key, 10)
    except ValueError:
        return None
    return value if str(value) == key and value in _INT64 else None
