"""Together AI's OpenAI-compatible API."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="together", hosts=("api.together.xyz",), prices_id="together", api_key=ApiKey("TOGETHER_API_KEY")
)
