"""Azure OpenAI: OpenAI's API on per-resource hosts.

Classic paths name a deployment, not a model (``/openai/deployments/{deployment}/chat/
completions?api-version=...``) and the body may leave ``model`` out, so the deployment
name stands in for the requested model. The v1 paths (``/openai/v1/...``) carry the model
in the body like OpenAI's own.
"""

import re

from collector.providers.base import ApiKey
from collector.providers.openai import OpenAIFamily

PROVIDER = OpenAIFamily(
    name="azure_openai",
    hosts=("*.openai.azure.com", "*.cognitiveservices.azure.com"),
    prices_id="azure",
    api_key=ApiKey("AZURE_OPENAI_API_KEY", header="api-key", scheme=""),
    stream_usage_option=True,
    path_model=re.compile(r"/deployments/([^/]+)/"),
)
