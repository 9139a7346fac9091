"""Seed material from names: the same name gives the same numbers in every process.

Python's ``hash()`` of a str changes with each interpreter (``PYTHONHASHSEED``), so streams that
must not depend on a name's place in a list take its sha256 instead.
"""

from __future__ import annotations

import hashlib
from typing import Literal


def name_words(name: str, count: int, byteorder: Literal["big", "little"]) -> list[int]:
    """The first ``count`` 32-bit words (at most 8) of the UTF-8 name's sha256.

    ``byteorder`` is part of the identity of every stream seeded with them: the workloads' data
    read the words big-endian and the search's Sobol' scrambles little-endian, and changing either
    would change every number those streams draw."""
    if not 0 < count <= 8:
        raise ValueError(f"count: got {count}; a sha256 has 1 to 8 words of 32 bits")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], byteorder) for i in range(0, 4 * count, 4)]
