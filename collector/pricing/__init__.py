"""Prices: per-model rates (:mod:`.rates`, no heavy imports: the settings use them), the
price book that costs a call (:mod:`.book`), and repricing stored calls (:mod:`.reprice`)."""
