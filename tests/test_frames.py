"""Issue 19: the pool's members by name; the opt-in `frames` member sees many frames, none of
a held-out user's."""

from __future__ import annotations

import random

from lab import frames
from lab.pool import HELD_OUT, POOL_STYLES, STYLES, style_records


def _words(text: str) -> set[str]:
    return {w.strip(",.!:") for w in text.split()}


def test_generated_frames_never_use_a_held_out_users_own_words():
    pool_words = set().union(*(_words(f"{s.opening} {s.closing}") for s in POOL_STYLES))
    own = set().union(*(_words(f"{s.opening} {s.closing}") for s in HELD_OUT)) - pool_words
    assert own == set(frames.LEFT_OUT)  # matey, Ada, Bo: what no pool member writes
    r = random.Random(0)
    seen = [frames.frame(r) for _ in range(5000)]
    for opening, closing in seen:
        assert not (_words(opening) | _words(closing)) & own, (opening, closing)
    held = {(s.opening, s.closing) for s in HELD_OUT}
    assert not held & set(seen)
    assert len(set(seen)) > 2000  # thousands of frames, not a handful
    assert len({o for o, _ in seen}) > 300 and len({c for _, c in seen}) > 1000


def test_frames_records_each_carry_their_own_frame(backbone):
    from lab.pool import sentences

    tok = backbone.tokenizer
    style = STYLES["frames"]
    recs = style_records(style, 40, tok)
    msgs = sentences(style.offset + 40)[style.offset:]
    frames_seen = set()
    for r, msg in zip(recs, msgs, strict=True):  # the message passed on word for word, framed
        assert msg in r.prompt
        opening, _, closing = r.answer.partition(f" {msg} ")
        assert opening and closing and closing[-1] in ".!"
        frames_seen.add((opening, closing))
    assert len(frames_seen) > 30  # each record its own frame
    assert [r.answer for r in style_records(style, 40, tok)] == [r.answer for r in recs]
    letter = style_records(STYLES["letter"], 3, tok)  # the one-frame styles are unchanged
    assert all(r.answer.startswith("Dear friend, ") and r.answer.endswith(" Yours, Max.") for r in letter)


def test_pool_styles_by_name():
    """The default pool, an opt-in member, and names that are no pool member (a held-out user)."""
    import pytest

    from lab.pool import EXTRA_STYLES, pool_styles
    from routing.errors import InputError

    assert pool_styles() == POOL_STYLES and "frames" not in {s.name for s in POOL_STYLES}
    assert pool_styles("letter, frames") == (STYLES["letter"], EXTRA_STYLES[0])
    for bad in ("letter,bo", "nope", "letter,letter"):
        with pytest.raises(InputError, match="each once"):
            pool_styles(bad)


def test_cli_pool_build_rejects_a_held_out_user_as_a_member(tmp_path, capsys):
    from spa.cli import main

    assert main(["pool", "build", "--out", str(tmp_path / "p"), "--styles", "letter,ada"]) == 2
    assert "each once" in capsys.readouterr().err
