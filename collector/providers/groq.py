"""Groq's OpenAI-compatible API (``/openai/v1``). Its legacy streams report usage only in
the final chunk's ``x_groq.usage``; newer ones use the standard top-level ``usage``."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="groq",
    hosts=("api.groq.com",),
    prices_id="groq",
    api_key=ApiKey("GROQ_API_KEY"),
    usage_paths=(("usage",), ("x_groq", "usage")),
)
