"""What the OpenAI and Ollama APIs share: chat messages in the task payload's plain form, tools, JSON output.

A worker's inference payload takes messages whose content is text, in roles ``system``, ``user`` and
``assistant`` (``runtimes/inference/request.py``), and a ``json_schema`` the output must follow. The clients'
richer shapes are mapped onto that here, on the requester's node, so that every worker, and every verifier
that replays the task, sees one plain form:

- content given as parts: the text parts joined by a newline; an image part is refused by name;
- ``developer`` is ``system``; a ``tool`` message (a function's result) becomes a user turn that names the
  call; an assistant turn that called functions becomes the JSON it answered with; two turns of one role in
  a row are joined (chat templates such as Gemma's require user and assistant to alternate);
- tools: their JSON schemas go into the system turn with the answer's form, and a JSON schema for that form
  (a call of one of the functions; or, with ``tool_choice`` "auto", that or a text answer) constrains the
  generation through a grammar on the worker. The node parses the answer back into tool calls. This is the
  generic tool calling of llama.cpp's server, for models whose template knows no tools (the packaged Gemma's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ChatError(ValueError):
    """A request the node cannot serve; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ROLE = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools make of the generation: ``choice`` is "auto", "required" or a function's name."""

    tools: tuple[Tool, ...]
    choice: str
    parallel: bool = True

    def instructions(self) -> str:
        listed = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                             for t in self.tools], separators=(",", ":"))
        call = '{"tool_calls": [{"name": <function name>, "arguments": <arguments as a JSON object>}]}'
        text = f"You can call these functions, given as JSON schemas:\n{listed}\nTo call functions, answer only {call}."
        if self.choice == "auto":
            text += ' To answer without calling one, answer {"content": <your answer>}.'
        elif self.choice != "required":
            text += f" Call the function {self.choice}."
        return text

    def schema(self) -> dict[str, Any]:
        tools = [t for t in self.tools if self.choice in ("auto", "required") or t.name == self.choice]
        calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": _arguments(t)},
                  "required": ["name", "arguments"]} for t in tools]
        items = calls[0] if len(calls) == 1 else {"anyOf": calls}
        array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
        if not self.parallel or self.choice not in ("auto", "required"):  # a function named: that one call
            array["maxItems"] = 1
        called = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}
        if self.choice != "auto":
            return called
        answered = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
        return {"anyOf": [called, answered]}


def _arguments(tool: Tool) -> Mapping[str, Any]:
    return tool.parameters or {"type": "object"}


@dataclass(frozen=True)
class ToolAnswer:
    """A generation under a ToolPlan, read back: calls (name, arguments as JSON text) or text content."""

    calls: tuple[tuple[str, str], ...]
    content: str | None


def read_tool_answer(text: str) -> ToolAnswer:
    """The answer's calls or content; text that is not the planned JSON (cut off by max_tokens) is content."""
    try:
        data = json.loads(text)
    except ValueError:
        return ToolAnswer((), text)
    if isinstance(data, dict) and isinstance(data.get("tool_calls"), list):
        calls = tuple((str(c.get("name", "")), json.dumps(c.get("arguments", {}), ensure_ascii=False))
                      for c in data["tool_calls"] if isinstance(c, dict))
        return ToolAnswer(calls, None)
    if isinstance(data, dict) and isinstance(data.get("content"), str):
        return ToolAnswer((), data["content"])
    return ToolAnswer((), text)


def text_content(content: Any, param: str) -> str:
    """A message's content as text: a string, or OpenAI's list of parts (text only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatError("message content must be text or a list of content parts", param)
    texts = []
    for n, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
            raise ChatError(f"{kind} content is not supported: the network's models take text only",
                            f"{param}[{n}]")
        else:
            raise ChatError(f"content part of type {kind!r} is not supported (only 'text')", f"{param}[{n}]")
    return "\n".join(texts)


def plain_messages(messages: Sequence[Any], *, tools: ToolPlan | None = None, ollama: bool = False,
                   ) -> list[dict[str, str]]:
    """Messages in the payload's plain form (module docstring); ``ChatError`` names the one at fault."""
    out: list[dict[str, str]] = []
    for n, message in enumerate(messages):
        param = f"messages[{n}]"
        if not isinstance(message, Mapping):
            raise ChatError("each message must be an object with a role and content", param)
        role = _ROLE.get(str(message.get("role")))
        if role is None:
            raise ChatError(f"role {message.get('role')!r} is not one of {', '.join(_ROLE)}", f"{param}.role")
        if ollama and message.get("images"):
            raise ChatError("images are not supported: the network's models take text only", f"{param}.images")
        content = text_content(message.get("content"), f"{param}.content")
        if message.get("role") == "tool":
            name = message.get("name") or message.get("tool_name") or message.get("tool_call_id") or "a function"
            content = f"Result of {name}: {content}"
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            content = json.dumps({"tool_calls": _plain_calls(calls, f"{param}.tool_calls")}, ensure_ascii=False)
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if not out:
        raise ChatError("'messages' must be a non-empty list", "messages")
    if tools is not None:
        if out[0]["role"] == "system":
            out[0]["content"] += "\n\n" + tools.instructions()
        else:
            out.insert(0, {"role": "system", "content": tools.instructions()})
    return out


def _plain_calls(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ChatError("tool_calls must be a list", param)
    plain = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise ChatError("each tool call needs a function with a name and arguments", param)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments else {}
            except ValueError:
                raise ChatError("a tool call's arguments must be JSON", param) from None
        plain.append({"name": function.get("name"), "arguments": arguments})
    return plain


def tool_plan(tools: Any, choice: Any, parallel: Any = True) -> ToolPlan | None:
    """OpenAI's (and Ollama's) ``tools`` and ``tool_choice`` as a plan; None when no tool may be called."""
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise ChatError("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > 64:
        raise ChatError("tools must be a list of up to 64 functions", "tools")
    parsed = []
    for n, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
            raise ChatError("each tool must be {'type': 'function', 'function': {...}}", f"tools[{n}]")
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise ChatError("a function's name must be 1-64 letters, digits, _ or -", f"tools[{n}].function.name")
        parameters = function.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise ChatError("a function's parameters must be a JSON schema", f"tools[{n}].function.parameters")
        parsed.append(Tool(name, str(function.get("description") or ""), parameters))
    if choice is None or choice in ("auto", "required"):
        picked = choice or "auto"
    elif choice == "none":
        return None
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        picked = str(choice["function"].get("name"))
        if picked not in {t.name for t in parsed}:
            raise ChatError(f"tool_choice names {picked!r}, which is not among the tools", "tool_choice")
    else:
        raise ChatError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                        "{'name': ...}}", "tool_choice")
    if not isinstance(parallel, bool):
        raise ChatError("parallel_tool_calls must be true or false", "parallel_tool_calls")
    return ToolPlan(tuple(parsed), picked, parallel)


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as the JSON schema the output must follow (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ChatError("response_format json_schema needs json_schema.schema (an object)",
                            "response_format.json_schema.schema")
        return dict(schema)
    raise ChatError("response_format type must be 'text', 'json_object' or 'json_schema'", "response_format")
