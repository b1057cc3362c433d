"""DeepSeek's OpenAI-compatible API: paths without ``/v1`` (or under ``/beta``), chat and a
Responses endpoint. Older responses report cache reads only as ``prompt_cache_hit_tokens``
(``prompt_tokens`` is hits plus misses, so it already includes them)."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="deepseek",
    hosts=("api.deepseek.com",),
    prices_id="deepseek",
    api_key=ApiKey("DEEPSEEK_API_KEY"),
    cache_read_keys=("prompt_cache_hit_tokens",),
)
