"""OpenRouter (``openrouter.ai/api/v1``): an OpenAI-compatible router whose usage also
states what the call cost, in USD (``usage.cost``), and cache writes."""

from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="openrouter",
    hosts=("openrouter.ai",),
    prices_id="openrouter",
    cost_key="cost",
)
