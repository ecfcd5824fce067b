"""The bundled ``demo`` graph: a tool-calling agent on a deterministic fake chat model. No API key needed.

The model streams its reply token by token and reports ``usage_metadata``
the way providers do: input tokens (with cache reads and writes) on the first
chunk, output tokens (with reasoning tokens) on the last. Asked anything, it
first calls the ``word_count`` tool on the question, then answers with the
count and ``tokens`` more tokens.

Options, in ``config["configurable"]``:

- ``tokens`` (default 12): how many tokens the answer streams after the count;
- ``token_delay`` (seconds, default 0): pause between tokens, for long runs;
- ``review`` (default false): stop at an interrupt before the tool runs,
  resumed with ``command={"resume": ...}``;
- ``fail`` (text): the agent raises ``RuntimeError(fail)`` instead of answering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

MODEL_NAME = "graphledger-demo-1"


@tool
def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else json.dumps(message.content)


class DemoChatModel(BaseChatModel):
    """A chat model that answers the same way every time, streaming and reporting usage."""

    tokens: int = 12
    token_delay: float = 0.0
    model_name: str = MODEL_NAME

    @property
    def _llm_type(self) -> str:
        return "graphledger-demo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _chunks(self, messages: list[BaseMessage], tools: list[Any] | None) -> Iterator[AIMessageChunk]:
        prompt_tokens = sum(len(_text(m).split()) for m in messages) + 10
        last = messages[-1] if messages else HumanMessage("")
        calls = sum(1 for m in messages if isinstance(m, AIMessage))
        if tools and not isinstance(last, ToolMessage):
            words = ["Let", " me", " count", " the", " words."]
            call = {"name": "word_count", "args": json.dumps({"text": _text(last)}), "id": f"call_{calls + 1}", "index": 0}
        else:
            count = _text(last) if isinstance(last, ToolMessage) else str(len(_text(last).split()))
            words = ["Your", " message", " has", f" {count}", " words."] + [f" {i}" for i in range(1, self.tokens + 1)]
            call = None
        first_usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": 0,
            "total_tokens": prompt_tokens,
            "input_token_details": {"cache_read": prompt_tokens // 2, "cache_creation": prompt_tokens // 4},
        }
        for index, word in enumerate(words):
            usage = first_usage if index == 0 else None
            yield AIMessageChunk(content=word, usage_metadata=usage)  # type: ignore[arg-type]  # a plain dict for LangChain's UsageMetadata TypedDict
        reasoning = 3
        output = len(words) + reasoning + (1 if call else 0)
        last_usage = {"input_tokens": 0, "output_tokens": output, "total_tokens": output, "output_token_details": {"reasoning": reasoning}}
        yield AIMessageChunk(
            content="",
            tool_call_chunks=[call] if call else [],  # type: ignore[list-item]  # a plain dict for ToolCallChunk
            usage_metadata=last_usage,  # type: ignore[arg-type]  # a plain dict for UsageMetadata
            response_metadata={"model_name": self.model_name, "finish_reason": "tool_calls" if call else "stop"},
            chunk_position="last",
        )

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs.get("tools")):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.content), chunk=generation)
            yield generation

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for index, chunk in enumerate(self._chunks(messages, kwargs.get("tools"))):
            if index and self.token_delay:
                await asyncio.sleep(self.token_delay)
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.content), chunk=generation)
            yield generation

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
    ) -> ChatResult:
        return self._result(list(self._chunks(messages, kwargs.get("tools"))))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Takes as long as streaming does (token_delay), streamed or not.
        return self._result([g.message async for g in self._astream(messages, stop, None, **kwargs)])

    @staticmethod
    def _result(chunks: list[Any]) -> ChatResult:
        merged: AIMessageChunk | None = None
        for chunk in chunks:
            merged = chunk if merged is None else merged + chunk
        assert merged is not None
        message = AIMessage(
            content=merged.content,
            tool_calls=merged.tool_calls,
            usage_metadata=merged.usage_metadata,
            response_metadata=merged.response_metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _options(config: RunnableConfig) -> dict[str, Any]:
    return dict(config.get("configurable") or {})


async def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
    options = _options(config)
    if options.get("fail"):
        raise RuntimeError(str(options["fail"]))
    model = DemoChatModel(tokens=int(options.get("tokens", 12)), token_delay=float(options.get("token_delay", 0.0)))
    reply = await model.bind_tools([word_count]).ainvoke(state["messages"], config)
    return {"messages": [reply]}


async def review(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
    if _options(config).get("review"):
        last = state["messages"][-1]
        interrupt({"question": "Run these tool calls?", "tool_calls": getattr(last, "tool_calls", [])})
    return {}


def _route(state: MessagesState) -> str:
    last = state["messages"][-1]
    return "review" if getattr(last, "tool_calls", None) else END


def build() -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("review", review)
    builder.add_node("tools", ToolNode([word_count]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", _route, ["review", END])
    builder.add_edge("review", "tools")
    builder.add_edge("tools", "agent")
    return builder.compile(name="demo")


graph = build()
