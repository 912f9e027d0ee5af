"""Agent frameworks from PyPI driving a real tool loop through Sluice: the OpenAI Agents SDK with
its default model class (the Responses API) and with its chat-completions model, and LangChain's
agent over `langchain-openai`, on the organization's OpenAI and Anthropic models (the stand-ins
call the tool until they see its result)."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, GPT, received, script

CALL = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
ANSWER = "It is sunny in Paris."


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_openai_agents_sdk_runs_a_tool_loop(
    gov: Services, byok: dict[str, str], model: str
) -> None:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    provider = model.split("/")[0]
    script(gov, provider, tool_calls=CALL, reply=ANSWER)
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny, 21 C in {city}"

    async def run() -> str:
        set_tracing_disabled(True)
        client = AsyncOpenAI(base_url=gov.edges["edge"].base_url, api_key=byok["key"])
        try:
            agent = Agent(
                name="weather",
                instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=OpenAIChatCompletionsModel(model=model, openai_client=client),
            )
            result = await Runner.run(agent, "What is the weather in Paris?")
            return str(result.final_output)
        finally:
            await client.close()

    assert asyncio.run(run()) == ANSWER
    assert seen == ["Paris"]
    requests = received(gov, provider)
    assert len(requests) == 2
    rows = gov.ledger(byok["org"])
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_openai_agents_sdk_default_responses_model_runs_a_tool_loop(
    gov: Services, byok: dict[str, str], model: str
) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from agents.models.openai_provider import OpenAIProvider

    provider = model.split("/")[0]
    script(gov, provider, tool_calls=CALL, reply=ANSWER)
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny, 21 C in {city}"

    async def run() -> str:
        set_tracing_disabled(True)
        client = AsyncOpenAI(base_url=gov.edges["edge"].base_url, api_key=byok["key"])
        try:
            # The SDK's default model class for a model name: no class is named here.
            default = OpenAIProvider(openai_client=client).get_model(model)
            assert isinstance(default, OpenAIResponsesModel)
            agent = Agent(
                name="weather",
                instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=default,
            )
            result = await Runner.run(agent, "What is the weather in Paris?")
            return str(result.final_output)
        finally:
            await client.close()

    assert asyncio.run(run()) == ANSWER
    assert seen == ["Paris"]
    requests = received(gov, provider)
    assert len(requests) == 2
    second = requests[1]["body"]
    if provider == "openai":
        assert requests[1]["path"] == "/v1/responses"
        assert second["input"][-1]["type"] == "function_call_output"
        assert second["input"][-1]["output"] == "Sunny, 21 C in Paris"
    else:
        assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    rows = gov.ledger(byok["org"])
    assert [(r["status"], r["endpoint"]) for r in rows] == [("ok", "/v1/responses")] * 2


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_langchain_agent_runs_a_tool_loop(gov: Services, byok: dict[str, str], model: str) -> None:
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    provider = model.split("/")[0]
    script(gov, provider, tool_calls=CALL, reply=ANSWER)
    seen: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny, 21 C in {city}"

    llm = ChatOpenAI(
        model=model, base_url=gov.edges["edge"].base_url, api_key=byok["key"], max_retries=0
    )
    agent = create_agent(llm, tools=[get_weather])
    state = agent.invoke({"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert state["messages"][-1].content == ANSWER
    assert seen == ["Paris"]
    # The second request carried the tool's result back to the provider.
    second = received(gov, provider)[1]["body"]
    text = str(second["messages"])
    assert "Sunny, 21 C in Paris" in text
