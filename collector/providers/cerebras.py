"""Cerebras' OpenAI-compatible API."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="cerebras", hosts=("api.cerebras.ai",), prices_id="cerebras", api_key=ApiKey("CEREBRAS_API_KEY")
)
