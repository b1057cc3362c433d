"""OpenRouter (``openrouter.ai/api/v1``): an OpenAI-compatible router whose usage also
states what the call cost, in USD (``usage.cost``), and cache writes."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="openrouter",
    hosts=("openrouter.ai",),
    prices_id="openrouter",
    api_key=ApiKey("OPENROUTER_API_KEY"),
    cost_key="cost",
)
