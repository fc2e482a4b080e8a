"""A request's prompt as tokens: plain text as is, chat messages through the model's own chat template
(or a built-in one for GGUF files converted without one), and the estimate used before a model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateError

from hyperion_node.errors import UserError
from runtimes.inference.request import GenerationRequest

# Characters per token assumed before a model is loaded (English averages ~4 for llama-class vocabularies).
CHARS_PER_TOKEN = 4
# Template markup per chat message ("<start_of_turn>user\n" ... "<end_of_turn>\n"), in tokens, for estimates.
CHAT_TOKENS_PER_MESSAGE = 8

# Chat templates for GGUF files converted without one (the packaged Gemma 3 270M is such a file: its
# converter copied no tokenizer.chat_template). Keyed by general.architecture. The Gemma template is
# Google's from google/gemma-3-270m-it tokenizer_config.json (also used by Gemma 1 and 2), reduced to
# string contents: a system message is folded into the first user turn, and "assistant" is "model".
BUILTIN_CHAT_TEMPLATES: Mapping[str, str] = {
    arch: (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}"
        "{%- set first_user_prefix = '' -%}"
        "{%- set loop_messages = messages -%}"
        "{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}"
        "{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    )
    for arch in ("gemma", "gemma2", "gemma3")
}


class PromptTokenizer:
    """Turns requests into prompt tokens for one runtime; keeps one chat formatter per model."""

    def __init__(self) -> None:
        self._chat_formatters: dict[str, Any] = {}

    def tokens(self, llm: Any, request: GenerationRequest) -> list[int]:
        """The prompt as tokens: plain text as is, chat messages through the model's own template."""
        if request.prompt is not None:
            # add_bos=True adds BOS only when the model's vocabulary asks for one.
            return list(llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False))
        formatter = self._chat_formatter(llm, request.model)
        try:
            formatted = formatter(messages=[dict(m) for m in request.messages or ()])
        except (TemplateError, ValueError, TypeError) as exc:  # raise_exception() in a template: ValueError
            raise UserError(f"model {request.model} rejects these messages: {exc}") from exc
        # The template writes BOS and turn markers as text, hence special=True, and no second BOS.
        return list(
            llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
        )

    def _chat_formatter(self, llm: Any, model_id: str) -> Any:
        formatter = self._chat_formatters.get(model_id)
        if formatter is None:
            template = llm.metadata.get("tokenizer.chat_template") or BUILTIN_CHAT_TEMPLATES.get(
                llm.metadata.get("general.architecture", "")
            )
            if not template:
                raise UserError(f"model {model_id} has no chat template; send 'prompt' instead of 'messages'")
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def special_text(token: int) -> str:
                return "" if token < 0 else llm.detokenize([token], special=True).decode("utf-8", "replace")

            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=special_text(llm.token_eos()),
                bos_token=special_text(llm.token_bos()),
            )
            # Same model, same template: a race between two threads only builds it twice.
            self._chat_formatters[model_id] = formatter
        return formatter


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """Prompt tokens guessed from characters, for admission before the model is loaded."""
    if request.prompt is not None:
        return math.ceil(len(request.prompt) / CHARS_PER_TOKEN) + 1
    messages = request.messages or ()
    chars = sum(len(m["content"]) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + CHAT_TOKENS_PER_MESSAGE * len(messages)
