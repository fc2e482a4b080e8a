"""What an inference result may be billed: the requester's count (``runtimes.interface.Tally``), no model.

Units are prompt tokens plus generated tokens (``Final.work_units``). The requester checks:

* generated tokens: the output's ``tokens_out`` is the number of its ``token_ids``, at most ``max_tokens``,
  and at least the number of pieces streamed (the runtime streams at most one piece per token); the pieces
  joined are the output's text, so the tokens billed are the ones the requester received;
* prompt tokens: at least 1 and at most what the prompt could hold without the model's tokenizer: one token
  per UTF-8 byte of the text (byte-fallback tokenizers such as Gemma's never need more: every token covers at
  least one byte, the chat template's special tokens aside) plus the template's tokens per message. A worker
  can overstate the prompt within that bound, never beyond it; a requester serving the same model could count
  exactly, which is left for later (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperion_node.errors import UserError
from runtimes.inference.request import GenerationRequest

# Special tokens a chat template may add per message (Gemma 3: <start_of_turn>, the role, newlines,
# <end_of_turn>) and once per prompt (<bos>, the generation prompt): generous bounds, not estimates.
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS = 16


class InferenceTally:
    def __init__(self, payload: Mapping[str, Any]) -> None:
        try:
            self.request: GenerationRequest | None = GenerationRequest.from_payload(payload)
        except UserError:
            self.request = None  # the worker should have refused it: any bill for it is refused below
        self.pieces = 0
        self.text: list[str] = []

    def partial(self, data: Mapping[str, Any]) -> None:
        self.pieces += 1
        piece = data.get("text")
        self.text.append(piece if isinstance(piece, str) else "\x00")

    def max_prompt_tokens(self) -> int:
        request = self.request
        assert request is not None
        if request.prompt is not None:
            return len(request.prompt.encode()) + TEMPLATE_TOKENS
        messages = request.messages or ()
        return (sum(len(m["content"].encode()) for m in messages) + TEMPLATE_TOKENS
                + TEMPLATE_TOKENS_PER_MESSAGE * len(messages))

    def units(self, output: Mapping[str, Any]) -> tuple[int, int] | str:
        if self.request is None:
            return "the task's payload is not a valid inference request"
        tokens_in, tokens_out, ids, text = (output.get(k) for k in ("tokens_in", "tokens_out", "token_ids", "text"))
        if (isinstance(tokens_in, bool) or not isinstance(tokens_in, int) or isinstance(tokens_out, bool)
                or not isinstance(tokens_out, int)):
            return "tokens_in and tokens_out must be whole numbers"
        if not isinstance(ids, list) or len(ids) != tokens_out:
            return f"tokens_out {tokens_out} is not the number of token ids returned"
        if tokens_out > self.request.max_tokens:
            return f"{tokens_out} tokens generated, {self.request.max_tokens} asked for at most"
        if self.pieces > tokens_out:
            return f"{self.pieces} pieces streamed, more than the {tokens_out} tokens billed"
        if not isinstance(text, str) or "".join(self.text) != text:
            return "the output's text is not what was streamed"
        most_in = self.max_prompt_tokens()
        if not 1 <= tokens_in <= most_in:
            return f"{tokens_in} prompt tokens billed; this prompt holds at most {most_in}"
        return tokens_in + tokens_out, tokens_in + tokens_out
