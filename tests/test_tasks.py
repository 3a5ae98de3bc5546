"""The generated evaluation tasks (lab/tasks.py): the worked sums are arithmetic that adds up,
the verdicts follow from the facts, and the records load with the project's data loader."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from lab.data import load_examples
from lab.tasks import main, make_compare, make_sums, worked_sum


@given(st.integers(0, 99_999), st.integers(0, 99_999))
def test_worked_sum_columns_compose_the_result(a, b):
    text = worked_sum(a, b)
    written = re.findall(r"write (\d+)", text)
    assert int("".join(reversed(written))) == a + b and text.endswith(f"= {a + b}.")
    for x, y, c, t in re.findall(r": (\d) \+ (\d)(?: \+ (\d))? = (\d+)", text):
        assert int(x) + int(y) + int(c or 0) == int(t)


def test_compare_verdicts_follow_from_the_facts():
    for rec in make_compare(300, seed=3):
        (p, x), (q, y) = re.findall(r"(\w+): (\d+)", rec["input"])
        ask = re.match(r"Who is (\w+)\?", rec["instruction"])[1]
        bigger = p if int(x) > int(y) else q
        smaller = q if bigger == p else p
        want = bigger if ask in ("older", "taller", "richer") else smaller
        assert rec["output"].endswith(f"so {want} is {ask}.")


def test_tasks_are_deterministic_and_load(tmp_path):
    assert make_sums(5, 1) == make_sums(5, 1) != make_sums(5, 2)
    for task in ("sums", "compare"):
        out = tmp_path / f"{task}.jsonl"
        main([task, "--n", "40", "--out", str(out)])
        exs = load_examples(out)
        assert len(exs) == 40 and all(ex.answer and "Response:" in ex.prompt for ex in exs)
