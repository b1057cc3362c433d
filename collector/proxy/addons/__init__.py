"""The pipeline's stages, one concern a module. A stage never imports another stage: what
two share lives in :mod:`collector.proxy.call`, :mod:`collector.proxy.model_rewrite` or
:mod:`collector.proxy.own_calls` (``tests/test_architecture.py`` checks it)."""
