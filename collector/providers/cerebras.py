"""Cerebras' OpenAI-compatible API."""

from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(name="cerebras", hosts=("api.cerebras.ai",), prices_id="cerebras")
