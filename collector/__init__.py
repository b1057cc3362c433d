"""The collector: everything that runs while traffic flows, and the data it leaves.

* :mod:`collector.proxy`: the running proxy: server, pipeline, the call state its stages
  share, and one module per stage in :mod:`collector.proxy.addons`.
* :mod:`collector.providers`: one module per API family (hosts, parsing, usage, keys).
* :mod:`collector.wire`: wire formats the stages read (SSE, AWS event stream, decoding).
* :mod:`collector.calls`: from a finished call to its row and its span.
* :mod:`collector.storage`: the tables' schema, the spool, DuckDB, the loader process, export.
* :mod:`collector.pricing`: the price book (costs per call) and repricing stored calls.
* :mod:`collector.budgets`: spend limits: periods, totals, alerts.
* :mod:`collector.routing`: the rules file, answer comparison, offline evaluation.
* :mod:`collector.settings`: the config file, the data directory's paths, validation.
* :mod:`collector.trust`: the boundary every outside value crosses, secrets, file modes,
  logs, and failing open.
"""
