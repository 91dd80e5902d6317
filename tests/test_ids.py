"""Ids: the documented form, and every position random over the whole alphabet."""

import re

from appliance.ids import ALPHABET, new_id


def test_ids_have_the_form_and_use_every_character_everywhere():
    ids = [new_id("key") for _ in range(3000)]
    assert all(re.fullmatch(f"key_[{ALPHABET}]{{20}}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    for position in range(4, 24):
        # 3000 draws of 32 characters: all of them, each about 94 times.
        seen = [i[position] for i in ids]
        assert set(seen) == set(ALPHABET)
        assert max(seen.count(c) for c in ALPHABET) < 160
