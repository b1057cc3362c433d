"""What llmtap runs with: the config file as declared models (:mod:`.config`), the data
directory's files (:mod:`.paths`), and the error messages both give (:mod:`.validation`).
Importing it loads neither DuckDB nor mitmproxy."""
