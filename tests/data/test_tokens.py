"""String tokens: fixed by their definition (so stores keep encoding new rows in any later process)."""

from __future__ import annotations

import polars as pl

from ctrkit.data.tokens import string_token, string_tokens

MASK = (1 << 64) - 1


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference(text: str | None, max_bytes: int = 64) -> int | None:
    """The module docstring's definition, in plain Python integers."""
    if not text:
        return None
    data = text.encode()
    if len(data) <= 8:
        return int.from_bytes(data, "big")
    folded = mix((len(data) * 0x9E3779B97F4A7C15) & MASK)
    for k in range(-(-max_bytes // 8)):
        piece = data[8 * k: 8 * k + 8]
        if len(data) > 8 * k:
            folded = mix(folded ^ int.from_bytes(piece, "big"))
    return folded - (1 << 64) if folded >= 1 << 63 else folded


def test_string_tokens_follow_their_definition():
    values = ["a", "ab", "abcdefgh", "\u00e9t\u00e9", "abcdefghi", "x" * 17, "device_ip_1234567890", "z" * 100, "", None, "ffffffff", "\u20ac" * 3]
    expected = [reference(v) for v in values]
    assert string_tokens(pl.Series(values), 64).to_list() == expected
    assert pl.DataFrame({"v": values}).select(string_token(pl.col("v"), 64)).to_series().to_list() == expected
    assert expected[:2] == [97, 24930] and expected[8:10] == [None, None]
    # max_bytes bounds the fold: two long strings equal in their first 16 bytes share a token at 16
    a, b = "p" * 16 + "one", "p" * 16 + "two"
    assert string_tokens(pl.Series([a, b]), 16).to_list() == [reference(a, 16), reference(b, 16)]
    assert reference(a, 16) == reference(b, 16) != reference(a, 64)  # the same length and prefix: one token at 16


def test_short_strings_are_exact_and_distinct():
    values = [f"{i:08x}" for i in range(0, 5000, 7)]
    tokens = string_tokens(pl.Series(values), 64).to_list()
    assert tokens == [int.from_bytes(v.encode(), "big") for v in values] and len(set(tokens)) == len(values)
