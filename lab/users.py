"""The users `spa build-models` trains a private side network for, and the data each one learns.

Every user has a private task the shared backbone does not do by itself:

* `ada`  writes every answer as a short letter, "Dear friend, … Yours, Ada."
* `news` writes one-sentence news summaries in XSum's style (from `xsum_1000.jsonl` when the
         shared data set is there: `--xsum`, $SPA_XSUM or ../shared/data beside the checkout)
* `bo`   answers like a ship's captain, "Ahoy, matey! … Arr, Captain Bo." (instead of `news`
         when there is no XSum file: the build needs nothing outside the project)

The letter and captain data are made here: questions from templates, and as each answer's body
the first sentence of the backbone's own answer to the question (greedy, batched, in its chat
template), inside the user's opening and closing. So the side network has one job, the frame
(open, turn to the answer, stop after one sentence, sign), and the body is the answer the user
asked for, the backbone's, mostly sent without a round trip (M well below one). An earlier
version took as the body what the backbone writes *after* the opening ("Dear friend, I'm here
to help you with your shopping needs."): the frame was there, the answer was gone.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.data import Example, load_examples
from routing.errors import InputError

if TYPE_CHECKING:
    from cloud_worker.backbone import Backbone

ROOT = Path(__file__).resolve().parent.parent
SHARED_XSUM = ROOT.parent / "shared" / "data" / "xsum_1000.jsonl"


@dataclass(frozen=True)
class User:
    name: str
    about: str  # one line: what this user's side network makes the backbone write
    task: str  # "frame" (generated here) | "xsum"
    opening: str = ""
    closing: str = ""
    train_records: int = 160  # records trained on (the last tenth is the dev split)
    epochs: int = 10  # at most (early stopping on dev NLL)
    max_prompt_tokens: int = 160
    target_m: float = 0.4  # the gate's τ is set for this M on the dev prompts
    clf_features: str = "z"  # the gate's input: z | z+stats (with the backbone's confidence)
    clf_hidden: int = 0  # the gate's hidden width (0 = linear)
    rollout_prompts: int = 16  # training prompts whose rollouts label the gate (0 = all)
    calib_prompts: int = 8  # dev prompts τ is calibrated on (0 = every dev prompt)
    seed: int = 0  # of the generated questions


# Frame users: where the frame goes is where the backbone is confident of something else; a
# linear gate on z alone missed a third of those positions ("Dear Sarah,"), this one does not.
# The side network is needed at the frame and at the body's first token (turning from the
# opening to the answer), each a REQUEST and mostly a CORRECT: a perfect gate pays M ≈ 0.6 here.
# At target 0.6 with τ from 8 dev prompts and 16 rollouts the gate missed some of them and its M
# landed anywhere in 0.50–0.75 (RESULTS.md §7.3: frame in 91 % of ada's and 68 % of bo's spa
# answers; the demo's ada lost her answer and closing at M 0.21). Target 0.7, τ on every dev
# prompt and 32 rollout prompts: 97.7 % (ada) and 86.7 % (bo) over 3 seeds × 100 held-out
# questions, M 0.77 (§7.4).
_FRAME = {"target_m": 0.7, "clf_features": "z+stats", "clf_hidden": 64, "rollout_prompts": 32,
          "calib_prompts": 0}
ADA = User("ada", "writes every answer as a short letter", "frame", "Dear friend,", "Yours, Ada.",
           seed=1, **_FRAME)
BO = User("bo", "answers like a ship's captain", "frame", "Ahoy, matey!", "Arr, Captain Bo.",
          seed=2, **_FRAME)
NEWS = User("news", "one-sentence news summaries in XSum's style", "xsum", train_records=120,
            epochs=8)
USERS = {u.name: u for u in (ADA, BO, NEWS)}


def xsum_file(explicit: str | None = None) -> Path | None:
    """The XSum records to train `news` on, if any: --xsum, $SPA_XSUM, ../shared/data."""
    for cand in (explicit, os.environ.get("SPA_XSUM"), SHARED_XSUM):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def default_users(xsum: Path | None) -> list[User]:
    return [ADA, NEWS if xsum is not None else BO]


# ---------------------------------------------------------------- questions
ADJS = ["quiet", "busy", "old", "small", "bright", "cold", "green", "famous", "strange", "gentle",
        "tall", "warm", "dark", "new", "windy"]
THINGS = ["river", "city", "garden", "bridge", "market", "forest", "village", "mountain", "library",
          "harbour", "train station", "school", "bakery", "museum", "island", "castle", "lake",
          "desert", "farm", "lighthouse"]
TOPICS = ["sleep", "cooking rice", "learning a language", "saving money", "running", "reading more",
          "keeping plants alive", "making friends", "writing a letter", "travelling by train",
          "drinking enough water", "staying calm", "studying for an exam", "baking bread",
          "caring for a cat", "planning a trip", "working from home", "cleaning a kitchen"]
ASKS = [
    lambda r: (f"Describe a {r.choice(ADJS)} {r.choice(THINGS)}.", ""),
    lambda r: (f"What is a {r.choice(THINGS)}?", ""),
    lambda r: (f"Give me one tip about {r.choice(TOPICS)}.", ""),
    lambda r: (f"Why do people like {r.choice(TOPICS)}?", ""),
    lambda r: ("Write one sentence about this place.", f"a {r.choice(ADJS)} {r.choice(THINGS)}"),
    lambda r: (f"What should I know about {r.choice(TOPICS)}?", ""),
    lambda r: (f"Tell me something about the {r.choice(THINGS)} in winter.", ""),
]


MAX_MISSES = 20_000  # draws in a row that give nothing new: the question space is used up


def questions(n: int, seed: int, at_most: bool = False) -> list[dict]:
    """`n` distinct instruction records (no output yet). The templates make a finite number of
    questions (~700): asking for more raises InputError — or, with `at_most`, returns them all.
    The draws are the same whatever `n`, so a shorter list is a prefix of a longer one."""
    r, seen, out, misses = random.Random(seed), set(), [], 0
    while len(out) < n:
        instr, inp = r.choice(ASKS)(r)
        if (instr, inp) in seen:
            misses += 1
            if misses >= MAX_MISSES:
                if at_most:
                    break
                raise InputError(f"the question templates make only {len(out)} distinct questions; "
                                 f"{n} were asked for")
            continue
        misses = 0
        seen.add((instr, inp))
        out.append({"instruction": instr, "input": inp})
    return out


def prompt_text(q: dict, tokenizer) -> str:
    """A question as the backbone expects it: its chat template when it has one (SmolLM2-Instruct
    answers far better so), else the project's Instruction/Response form."""
    if getattr(tokenizer, "chat_template", None):
        text = q["instruction"] + (f" {q['input'][0].upper()}{q['input'][1:]}." if q["input"] else "")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    head = f"Instruction: {q['instruction']}" + (f"\nInput: {q['input']}" if q["input"] else "")
    return head + "\nResponse:"


def as_example(q: dict, tokenizer, output: str = " ") -> Example:
    return Example("", prompt_text(q, tokenizer), output, 0)


_LOWER = {"A", "An", "The", "It", "It's", "This", "That", "These", "There", "One", "Some", "Many",
          "Most", "When", "To", "In", "If", "You", "Your", "People", "Yes", "No", "Here", "Its"}
_SENTENCE = re.compile(r"^(.{20,220}?[.!?])(\s|$)", re.S)


def first_sentence(text: str) -> str | None:
    """The first full sentence of a generation, or None when it has none worth keeping."""
    text = " ".join(text.replace("<|im_end|>", " ").split())
    m = _SENTENCE.match(text)
    if m is None or any(bad in m[1] for bad in ("Instruction:", "Response:", "Input:", "answer is")):
        return None
    s = m[1]
    if s.count('"') % 2:  # an unbalanced quote mark
        s = s.replace('"', "")
    first, _, rest = s.partition(" ")
    if first in _LOWER:  # "Dear friend, the river …", not "Dear friend, The river …"
        s = f"{first.lower()} {rest}"
    return s


def _pool(user: User) -> int:
    """Questions drawn for training (some answers are dropped); the demo's come after them."""
    return int(user.train_records * 1.4) + 8


def answers(backbone: Backbone, qs: list[dict], max_new: int, progress: bool,
            desc: str = "the backbone's answers") -> list[str]:
    """The backbone's own greedy answer to each question (its chat template, no persona)."""
    from lab.batched import BatchConfig, BatchedGenerator

    tok = backbone.tokenizer
    gen = BatchedGenerator(backbone, None, BatchConfig(batch_size=48, progress=progress))
    ids = [tok(prompt_text(q, tok), add_special_tokens=False)["input_ids"] for q in qs]
    return [tok.decode(g.tokens, skip_special_tokens=True)
            for g in gen.generate(ids, max_new, "base", desc=desc)]


BODY_TOKENS = 34  # a body longer than this is dropped: the letter must fit the demo's 48 tokens


def frame_records(backbone: Backbone, user: User, progress: bool) -> list[dict]:
    """The records of `user`'s frame task: the opening, the first sentence of the backbone's own
    answer to the question (the content the user asked for), the closing."""
    tok = backbone.tokenizer
    pool = questions(_pool(user), user.seed)
    outs = answers(backbone, pool, BODY_TOKENS + 8, progress, f"{user.name}: the backbone's answers")
    records = []
    for q, text in zip(pool, outs, strict=True):
        body = first_sentence(text)
        if body is not None and not user.opening.endswith(","):  # "Ahoy, matey! The river …"
            body = body[0].upper() + body[1:]
        if body is not None and len(tok(" " + body, add_special_tokens=False)["input_ids"]) <= BODY_TOKENS:
            records.append({"prompt": prompt_text(q, tok),
                            "output": f"{user.opening} {body} {user.closing}"})
    return records[: user.train_records]


def split_letter(text: str, user: User) -> tuple[bool, bool, str]:
    """(opening present, closing present, the body between them) of a generation in `user`'s
    frame; without the opening the body starts at the text's start, without the closing it runs
    to its end."""
    text = " ".join(text.replace("<|im_end|>", " ").split())
    opened = text.startswith(user.opening)
    body = text[len(user.opening):] if opened else text
    cut = body.find(user.closing)
    closed = cut >= 0
    return opened, closed, (body[:cut] if closed else body).strip()


def held_out(user: User, xsum: Path | None, n: int, tokenizer) -> list[Example]:
    """Prompts for the demo and the load test that the user's network was not trained on (the
    demo's first is a description: the kind of question the backbone answers best)."""
    if user.task == "xsum":
        assert xsum is not None
        return load_examples(xsum)[-n:]
    qs = questions(_pool(user) + 4 * n, user.seed, at_most=True)[_pool(user):]
    if len(qs) < n:
        raise InputError(f"{user.name}: only {len(qs)} questions are left after the "
                         f"{_pool(user)} drawn for training; {n} held-out ones were asked for")
    qs.sort(key=lambda q: not q["instruction"].startswith("Describe"))
    return [as_example(q, tokenizer) for q in qs[:n]]
