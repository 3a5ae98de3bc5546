"""Task data: JSONL records in the SPA code's format or XSum's, as prompt/answer examples.

    {"instruction": …, "input": …, "output": …}   (SPA / Alpaca style)
    {"document": …, "summary": …}                  (XSum)
    {"prompt": …, "output": …}                     (a prompt as sent, e.g. in a chat template)

The prompt's long part (document or input) is truncated to fit `max_prompt_tokens`; the
closing cue ("Summary:") is always kept. Loss is on the answer tokens (and EOS) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from routing.errors import InputError, read_text


@dataclass(frozen=True)
class Example:
    head: str  # the truncatable part of the prompt
    tail: str  # the cue after it, kept whole
    answer: str
    line: int  # 1-based line number in the source file

    @property
    def prompt(self) -> str:
        return self.head + self.tail

    def prompt_ids(self, tokenizer, max_prompt_tokens: int = 384) -> list[int]:
        head = tokenizer(self.head, add_special_tokens=True)["input_ids"]
        tail = tokenizer(self.tail, add_special_tokens=False)["input_ids"]
        budget = max(1, max_prompt_tokens - len(tail))
        return head[:budget] + tail

    def answer_ids(self, tokenizer, max_answer_tokens: int = 64) -> list[int]:
        return tokenizer(self.answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]


def record_to_example(rec: object, line: int, where: str) -> Example:
    if not isinstance(rec, dict):
        raise InputError(f"{where}:{line}: expected a JSON object, got {type(rec).__name__}")
    if "document" in rec or "summary" in rec:
        _require(rec, ("document", "summary"), line, where)
        return Example(f"Document: {rec['document'].strip()}", "\nSummary:", " " + rec["summary"].strip(), line)
    if "prompt" in rec:  # used whole, never cut; the answer follows it as written
        _require(rec, ("prompt", "output"), line, where)
        return Example("", rec["prompt"], rec["output"], line)
    if "instruction" in rec or "output" in rec:
        _require(rec, ("instruction", "output"), line, where)
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise InputError(f"{where}:{line}: field 'input' must be a string")
        head = f"Instruction: {rec['instruction'].strip()}"
        if inp.strip():
            head += f"\nInput: {inp.strip()}"
        return Example(head, "\nResponse:", " " + rec["output"].strip(), line)
    raise InputError(
        f"{where}:{line}: record has none of instruction/output, document/summary, prompt/output "
        f"(keys: {sorted(rec)})"
    )


def _require(rec: dict, fields: tuple[str, ...], line: int, where: str) -> None:
    for f in fields:
        if f not in rec:
            raise InputError(f"{where}:{line}: record is missing field '{f}'")
        if not isinstance(rec[f], str) or not rec[f].strip():
            raise InputError(f"{where}:{line}: field '{f}' must be a non-empty string")


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Read a JSONL file; every bad line is reported with its number."""
    text = read_text(path, "data file")
    examples = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: malformed JSON: {exc.msg}") from None
        examples.append(record_to_example(rec, n, str(path)))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise InputError(f"data file {path} holds no records")
    return examples


def read_prompt_file(path: str | Path) -> list[str]:
    """A prompt file: one prompt a line, `\\n` for a newline inside a prompt; blank lines skipped."""
    lines = [ln.replace("\\n", "\n") for ln in read_text(path, "prompt file").splitlines()
             if ln.strip()]
    if not lines:
        raise InputError(f"{path}: no prompts in the file")
    return lines


def write_prompt_file(prompts: list[str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
    return path


def split(examples: list[Example], spec: str) -> list[Example]:
    """Slice by a Python-style 'start:stop' spec, e.g. ':800' or '800:'."""
    if not spec:
        return examples
    try:
        a, b = (int(p) if p.strip() else None for p in spec.split(":"))
    except ValueError:
        raise InputError(f"bad split {spec!r}: expected 'start:stop', e.g. ':800' or '800:'") from None
    part = examples[a:b]
    if not part:
        raise InputError(f"split {spec!r} of {len(examples)} records is empty")
    return part
