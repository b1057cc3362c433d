"""Together AI's OpenAI-compatible API."""

from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(name="together", hosts=("api.together.xyz",), prices_id="together")
