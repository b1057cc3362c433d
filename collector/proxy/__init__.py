"""The running proxy: mitmproxy embedded (:mod:`.server`), llmtap's stages installed as one
addon (:mod:`.pipeline`) in the order :meth:`.server.LlmtapProxy._stages` gives with its
reasons, the per-call state the stages share (:mod:`.call`), and what several stages do
(:mod:`.model_rewrite`, :mod:`.own_calls`)."""
