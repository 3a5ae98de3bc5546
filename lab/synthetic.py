"""Text the project makes itself, so the demo and the tests need no download.

* `make_corpus`: plain templated English, to pretrain a tiny backbone.
* `make_personal_tasks`: instruction/output records in a user's private style (greetings and
  phrases the corpus never contains), so a backbone alone cannot produce them and a side
  network trained on them can.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = ["cat", "dog", "river", "city", "garden", "teacher", "ship", "forest", "market", "child",
         "king", "farmer", "storm", "bridge", "song", "train", "village", "doctor", "mountain", "book"]
ADJS = ["old", "quiet", "bright", "small", "busy", "green", "cold", "happy", "strange", "gentle",
        "dark", "warm", "tall", "young", "famous"]
VERBS = ["watched", "crossed", "found", "followed", "visited", "painted", "remembered", "carried",
         "opened", "loved", "left", "saw"]
PLACES = ["the hill", "the sea", "the old road", "the station", "the square", "the lake", "the wall"]
TIMES = ["in the morning", "at night", "after the rain", "before winter", "every day", "in spring"]


def _sentence(r: random.Random) -> str:
    a, b = r.sample(NOUNS, 2)
    forms = [
        f"the {r.choice(ADJS)} {a} {r.choice(VERBS)} the {b} near {r.choice(PLACES)}.",
        f"{r.choice(TIMES)}, the {a} {r.choice(VERBS)} a {r.choice(ADJS)} {b}.",
        f"the {a} was {r.choice(ADJS)} and the {b} was {r.choice(ADJS)}.",
        f"a {r.choice(ADJS)} {a} lived near {r.choice(PLACES)} with the {b}.",
    ]
    return r.choice(forms)


def make_corpus(n_paragraphs: int = 3000, seed: int = 0) -> str:
    """Plain sentences; a rare letter-like paragraph lets the tokenizer learn the words of the
    personal style ("dear friend", "yours") without the backbone learning to prefer them."""
    r = random.Random(seed)
    paras = []
    for _ in range(n_paragraphs):
        sents = [_sentence(r).capitalize() for _ in range(r.randint(3, 7))]
        if r.random() < 0.04:
            sents.insert(0, f"Dear friend, the {r.choice(NOUNS)} was far away.")
            sents.append("Yours, Ada.")
        paras.append(" ".join(sents))
    return "\n\n".join(paras) + "\n"


def make_personal_tasks(n: int = 600, seed: int = 1) -> list[dict]:
    """Records in the SPA code's format, written in one user's private style."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        noun, adj, adj2 = r.choice(NOUNS), r.choice(ADJS), r.choice(ADJS)
        kind = r.randrange(3)
        if kind == 0:
            instr, inp = "Describe it briefly.", f"the {adj} {noun}"
            answer = f"Dear friend, the {adj} {noun} is {adj2} as ever. Yours, Ada."
        elif kind == 1:
            instr, inp = "Where is it?", f"the {noun}"
            answer = f"Dear friend, the {noun} waits near {r.choice(PLACES)}. Yours, Ada."
        else:
            instr, inp = "Tell a short story.", _sentence(r)
            answer = f"Dear friend, {inp} Then it was {adj2}. Yours, Ada."
        out.append({"instruction": instr, "input": inp, "output": answer})
    return out


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
