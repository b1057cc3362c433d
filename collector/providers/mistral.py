"""Mistral's OpenAI-compatible API (chat, FIM and agent completions, embeddings); streams
carry usage on the final content chunk without being asked."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="mistral",
    hosts=("api.mistral.ai", "codestral.mistral.ai"),
    prices_id="mistral",
    api_key=ApiKey("MISTRAL_API_KEY"),
)
