"""Seed words from names, against the digest unpacked another way (struct)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from pipeline.core.seeds import name_words


@pytest.mark.parametrize(("byteorder", "code"), [("big", ">"), ("little", "<")])
def test_words_are_the_digest_read_in_the_given_byte_order(byteorder, code):
    digest = hashlib.sha256(b"warmup_cosine").digest()
    assert name_words("warmup_cosine", 8, byteorder) == list(struct.unpack(f"{code}8I", digest))
    assert name_words("warmup_cosine", 4, byteorder) == list(
        struct.unpack(f"{code}4I", digest[:16])
    )


def test_the_two_byte_orders_differ_and_a_name_is_not_its_neighbour():
    assert name_words("tutorial", 4, "big") != name_words("tutorial", 4, "little")
    assert name_words("tutorial", 4, "big") != name_words("tutorial2", 4, "big")


@pytest.mark.parametrize("count", [0, 9])
def test_a_count_outside_one_to_eight_is_refused(count):
    with pytest.raises(ValueError, match="1 to 8"):
        name_words("tutorial", count, "big")
