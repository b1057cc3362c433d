"""Z.ai (Zhipu GLM) OpenAI-compatible API under ``/api/paas/v4``."""

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(name="zai", hosts=("api.z.ai",), prices_id="zai", api_key=ApiKey("ZAI_API_KEY"))
