"""The official ``openai`` and ``ollama`` clients against real daemons: a gateway G that serves no model and a
worker W that serves the packaged Gemma. Every request goes to G, which routes it to W over libp2p.

What the clients rely on: tool calls (whole and streamed), JSON-schema output that parses and follows the
schema, logprobs, usage in the last streamed chunk, ``n`` choices, ``GET /v1/models/{id}``, every Ollama endpoint
the node serves, and a field or option the node cannot honour refused by name, not ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false"]
OFF = '"zk-groth16", "render-blender"'
WORKER = [*FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.n_ctx=1024", "runtimes.inference.max_streams=4",
          "runtimes.inference.n_threads=1", "runtimes.embedding.include_packaged_model=true",
          "runtimes.embedding.n_threads=1"]
GATEWAY = [*FAST, f'runtimes.disabled=["inference", {OFF}]', "api.max_choices=2"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


class Network:
    def __init__(self, root: Path) -> None:
        self.w = NodeProcess(root / "w", sets=WORKER).start()
        self.g = NodeProcess(root / "g", sets=[*GATEWAY, f'p2p.bootstrap=["{self.w.p2p_addr()}"]']).start()
        wait_until(lambda: any(m["id"] == MODEL for m in self.g.get("/v1/models")["data"]), timeout=60,
                   what="G knows a provider of the model")
        wait_until(lambda: any(o["runtime"] == "embedding" for p in self.g.get("/api/peers")
                               for o in (p.get("offers") or [])), timeout=60, what="G knows W's embedder")

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.g.api_url + "/v1", api_key=self.g.token, max_retries=2, timeout=120)

    def ollama(self, node: NodeProcess | None = None) -> ollama.Client:
        node = node or self.g
        return ollama.Client(host=node.api_url, headers={"Authorization": f"Bearer {node.token}"}, timeout=120)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("client-apis"))
    try:
        yield network
    finally:
        stop_all([network.g, network.w])


def test_tool_calls_whole_and_streamed(net: Network) -> None:
    client = net.openai()
    answer = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER],
                                            tool_choice="required", max_tokens=40, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls[:1]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], stream=True,
                                                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                                max_tokens=40, temperature=0):
        delta = chunk.choices[0].delta
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"name": "", "arguments": ""})
            entry["name"] += part.function.name or ""
            entry["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather"
    assert "city" in json.loads(calls[0]["arguments"])

    # The function's result goes back as a tool message; the model answers (with text or another call).
    follow = client.chat.completions.create(model=MODEL, max_tokens=30, temperature=0, tools=[WEATHER], messages=[
        *ASK_WEATHER, choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "celsius": 21}'}])
    message = follow.choices[0].message
    assert message.content or message.tool_calls


def test_json_schema_and_json_object_output(net: Network) -> None:
    client = net.openai()
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=60, temperature=0.7, seed=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Describe a person as JSON."}]}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    person = json.loads(answer.choices[0].message.content)
    assert isinstance(person["name"], str)
    assert isinstance(person["age"], int)
    assert len(person["name"]) <= 12
    loose = client.chat.completions.create(model=MODEL, max_tokens=60, temperature=0,
                                           messages=[{"role": "user", "content": "Answer in JSON: what is 2+2?"}],
                                           response_format={"type": "json_object"})
    assert (loose.choices[0].message.content or "").lstrip().startswith("{")
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_logprobs_usage_in_the_last_chunk_and_n_choices(net: Network) -> None:
    client = net.openai()
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    carried = [chunk.choices[0].logprobs.content or [] for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=2, stream=True) if chunk.choices and chunk.choices[0].logprobs]
    assert len(carried) >= 2  # with the pieces as they come, not all at the end
    assert [(e.token, e.logprob) for c in carried for e in c] == [(e.token, e.logprob) for e in content]
    legacy = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == 4
    assert len(legacy.choices[0].logprobs.top_logprobs[0]) == 2

    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to 3."}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])

    two = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}],
                                         max_tokens=8, temperature=1.0, seed=11, n=2)
    one = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}],
                                         max_tokens=8, temperature=1.0, seed=11)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == one.choices[0].message.content  # choice 0 has the seed asked for
    assert two.usage.prompt_tokens == one.usage.prompt_tokens  # one prompt, two completions
    assert one.usage.completion_tokens < two.usage.completion_tokens <= 16
    streamed = list(client.completions.create(model=MODEL, prompt="Fruit:", max_tokens=4, temperature=1.0, n=2,
                                              stream=True))
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, max_tokens=2, n=3)
    assert raised.value.body["param"] == "n"  # type: ignore[index]


def test_models_and_fields_the_node_cannot_honour(net: Network) -> None:
    client = net.openai()
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    refused = [
        ({"extra_body": {"mirostat": 2}}, "mirostat"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "messages[0].content[1]"),
    ]
    for kwargs, param in refused:
        args: dict[str, Any] = {"model": MODEL, "messages": ASK_WEATHER, "max_tokens": 2, **kwargs}
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(**args)
        assert raised.value.body["param"] == param, raised.value.body  # type: ignore[index]
        assert param.split("[")[0] in raised.value.body["message"] or "image" in raised.value.body["message"]  # type: ignore[index]
    # Accepted by design without effect: user (the node keeps nothing per end user).
    assert client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, max_tokens=2, user="u-1").choices


def test_every_ollama_endpoint(net: Network) -> None:
    client = net.ollama()
    assert httpx.get(net.g.api_url + "/api/version", headers={"Authorization": f"Bearer {net.g.token}"}
                     ).json()["version"]
    assert MODEL in [m.model for m in client.list().models]
    shown = client.show(MODEL)
    assert shown.details is not None
    assert shown.details.format == "gguf"
    assert client.ps().models == []  # G serves no model itself
    assert [m.model for m in net.ollama(net.w).ps().models] == [MODEL]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404

    whole = client.generate(model=MODEL, prompt="1, 2, 3,", raw=True, options={"temperature": 0, "num_predict": 6})
    assert whole.done
    assert whole.done_reason == "length"
    assert whole.eval_count == 6
    assert whole.response
    as_json = client.generate(model=MODEL, prompt="Give a colour and its hex code as JSON.", format="json",
                              options={"temperature": 0, "num_predict": 40})
    assert as_json.response.lstrip().startswith("{")  # the grammar's first character, however it ends
    if as_json.done_reason == "stop":
        assert isinstance(json.loads(as_json.response), dict)
    pieces = list(client.generate(model=MODEL, prompt="Say hi.", stream=True,
                                  options={"temperature": 0, "num_predict": 6, "num_ctx": 4096}))
    assert pieces[-1].done
    assert not any(p.done for p in pieces[:-1])
    assert "".join(p.response for p in pieces)

    chat = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Say hi."}], stream=True,
                            options={"temperature": 0, "num_predict": 6}))
    assert chat[-1].done
    assert "".join(c.message.content or "" for c in chat)
    shaped = client.chat(model=MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}],
                         format=PERSON, options={"temperature": 0, "num_predict": 60})
    assert isinstance(json.loads(shaped.message.content)["age"], int)
    called = client.chat(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], options={"temperature": 0,
                                                                                      "num_predict": 40})
    if called.message.tool_calls:
        assert called.message.tool_calls[0].function.name == "get_weather"
    else:
        assert called.message.content

    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model=MODEL, prompt="x", options={"mirostat": 2})
    assert refused.value.status_code == 400
    assert "mirostat" in refused.value.error
    vectors = client.embed(model=MODEL, input=["The cat sat on the mat.", "Stock prices fell today."]).embeddings
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1]) == 640
    assert cosine(vectors[0], vectors[1]) < 0.99
    assert client.embeddings(model=MODEL, prompt="The cat sat on the mat.").embedding is not None


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_of_two_texts(net: Network) -> None:
    client = net.openai()
    texts = ["The cat sat on the mat.", "Stock prices fell today.", "The cat sat on the mat."]
    answer = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 and decodes it
    vectors = [d.embedding for d in answer.data]
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert cosine(vectors[0], vectors[2]) == pytest.approx(1.0, abs=2e-3)  # a text with itself (batch shapes: 0.9986+)
    assert cosine(vectors[0], vectors[1]) < 0.99  # with a different text
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, abs_tol=1e-4)  # unit length, as OpenAI's
    assert answer.usage.prompt_tokens >= 3
    floats = client.embeddings.create(model=MODEL, input="The cat sat on the mat.", encoding_format="float")
    assert cosine(floats.data[0].embedding, vectors[0]) == pytest.approx(1.0, abs=2e-3)
    again = client.embeddings.create(model=MODEL, input="The cat sat on the mat.", encoding_format="float")
    assert cosine(floats.data[0].embedding, again.data[0].embedding) == pytest.approx(1.0, abs=1e-9)  # same batch
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert raised.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="x")
