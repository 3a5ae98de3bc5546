"""Incremental detokenization: the text each new token adds, decoding a short window only.

The text a token adds depends on its neighbours (byte-level BPE pieces may split a character;
some tokenizers drop a word's leading space at the start of a decode), so each step decodes
the tokens since `prefix` twice — up to `read` (already shown) and up to the end — and returns
the difference (vLLM's detokenizer does the same). A piece that ends inside a character
(U+FFFD) waits for the next token; the last token flushes whatever is left. The cost per token
is bounded by the window, not by the length of the text.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class Detokenizer:
    """One stream's text, token by token: `push(token) -> the text it adds`."""

    def __init__(self, tokenizer) -> None:
        self._decode = tokenizer.decode
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens whose text was returned

    def _text(self, ids: list[int]) -> str:
        return self._decode(ids, skip_special_tokens=True)

    def push(self, token: int, final: bool = False) -> str:
        self.ids.append(token)
        shown = self._text(self.ids[self.prefix : self.read])
        text = self._text(self.ids[self.prefix :])
        if not final and (len(text) <= len(shown) or text.endswith(REPLACEMENT)):
            return ""  # nothing yet, or half a character: wait for the next token
        new = text[len(shown) :] if text.startswith(shown) else text
        self.prefix, self.read = self.read, len(self.ids)
        return new
