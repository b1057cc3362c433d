"""Hugging Face's inference router: OpenAI-compatible paths behind a backend prefix
(``/{backend}/v1/chat/completions``, or ``/v1/...`` to let it choose). Some backends report
cache reads as a top-level ``usage.cached_tokens``. Prices depend on the backend, so
calls are priced by model."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="huggingface",
    hosts=("router.huggingface.co",),
    prices_id=None,
    api_key=ApiKey("HF_TOKEN"),
    cache_read_keys=("cached_tokens",),
)
