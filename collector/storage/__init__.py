"""The data llmtap keeps: the tables' columns (:mod:`.schema`), the append-only spool the
proxy writes (:mod:`.spool`), the DuckDB store (:mod:`.database`), the loader process that
moves spooled calls into it (:mod:`.loader`), and export (:mod:`.export`)."""
