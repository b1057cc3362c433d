"""What keeps llmtap safe to run: the one boundary outside values cross (:mod:`.boundary`),
secrets and redaction (:mod:`.privacy`), private files (:mod:`.private`), masked logs
(:mod:`.logs`), and hooks that fail open (:mod:`.failopen`)."""
