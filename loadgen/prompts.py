"""The load test's prompts, as token ids: from a JSONL task file, a text file (one prompt a
line) or, with no file, the built-in personal-style tasks."""

from __future__ import annotations

from routing.errors import InputError


def load_prompts(path: str | None, tokenizer, max_prompt_tokens: int = 384,
                 n_default: int = 64) -> list[list[int]]:
    """Prompts of at most `max_prompt_tokens` tokens each, from a JSONL task file
    (instruction/output or document/summary: the long part is cut, the cue kept), a text file
    (one prompt a line, `\\n` for a newline; the head is kept), or, with no path, the built-in
    personal-style tasks."""
    from lab.data import load_examples, read_prompt_file, record_to_example

    if max_prompt_tokens < 1:
        raise InputError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
    if path is None:
        from lab.synthetic import make_personal_tasks

        examples = [record_to_example(r, i + 1, "builtin")
                    for i, r in enumerate(make_personal_tasks(n_default, seed=2))]
    elif path.endswith(".jsonl"):
        examples = load_examples(path)
    else:
        return [tokenizer(ln)["input_ids"][:max_prompt_tokens] for ln in read_prompt_file(path)]
    if not examples:
        raise InputError(f"{path}: no prompts in the file")
    return [ex.prompt_ids(tokenizer, max_prompt_tokens) for ex in examples]
