"""``llmtap demo``: a local fake provider (:mod:`.fake_provider`) and the real proxy, driven
by the official SDKs (:mod:`.tour`), then the dashboard on what they recorded."""
