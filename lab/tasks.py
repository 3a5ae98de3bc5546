"""Further evaluation tasks the project generates itself (issue 17 item 5), in the SPA code's
instruction/input/output format, so `benchmarks/spa_xsum.py --data FILE` runs them with the XSum
protocol (train `:800` with its last tenth as dev, evaluate `800:`, bootstrap and paired
intervals):

* `sums`    — a question → worked-answer task: column addition of two 3-digit numbers, the
              answer written digit by digit with its carries, then the result. The content is
              checkable and the 135M backbone gets much of it wrong.
* `compare` — a facts → verdict task: two people's ages, heights or savings, restated, compared,
              then the verdict. The side network must carry both the form and the right verdict.

    python -m lab.tasks sums --n 1000 --out runs/tasks/sums.jsonl
"""

from __future__ import annotations

import argparse
import random

from lab.synthetic import write_jsonl

NAMES = ["Ada", "Bo", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena",
         "Mia", "Noor", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma"]
MEASURES = [("years old", "age", "older", "younger"), ("cm tall", "height", "taller", "shorter"),
            ("euros saved", "savings", "richer", "poorer")]
_PLACES = ["ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands"]


def worked_sum(a: int, b: int) -> str:
    """Column addition with carries, ones first; the last column writes its whole total."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    n, carry, steps = max(len(xs), len(ys)), 0, []
    for i in range(n):
        da, db = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = da + db + carry
        part = f"{_PLACES[i]}: {da} + {db}" + (f" + {carry}" if carry else "") + f" = {total}"
        if i == n - 1:
            steps.append(f"{part}, write {total}.")
        else:
            carry = total // 10
            steps.append(f"{part}, write {total % 10}" + (f" carry {carry}." if carry else "."))
    return " ".join(steps) + f" So {a} + {b} = {a + b}."


def make_sums(n: int, seed: int = 0) -> list[dict]:
    r, out = random.Random(seed), []
    for _ in range(n):
        a, b = r.randint(100, 999), r.randint(100, 999)
        out.append({"instruction": "Add the two numbers. Show the column addition.",
                    "input": f"{a} + {b}", "output": worked_sum(a, b)})
    return out


def make_compare(n: int, seed: int = 0) -> list[dict]:
    r, out = random.Random(seed), []
    for _ in range(n):
        p, q = r.sample(NAMES, 2)
        unit, what, more, less = r.choice(MEASURES)
        lo, hi = {"age": (8, 80), "height": (120, 200), "savings": (10, 990)}[what]
        x, y = r.sample(range(lo, hi), 2)
        ask = r.choice([more, less])
        winner = (p if x > y else q) if ask == more else (p if x < y else q)
        sign = ">" if x > y else "<"
        out.append({"instruction": f"Who is {ask}? State the facts, then the verdict.",
                    "input": f"{p}: {x} {unit}. {q}: {y} {unit}.",
                    "output": f"{p} has {x}, {q} has {y}. {x} {sign} {y}, so {winner} is {ask}."})
    return out


TASKS = {"sums": make_sums, "compare": make_compare}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    print(write_jsonl(TASKS[args.task](args.n, args.seed), args.out))


if __name__ == "__main__":
    main()
