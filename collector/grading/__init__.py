"""Graders: how an answer is scored in [0, 1] (:mod:`.graders`): the ``[graders."NAME"]``
tables of the config, which calls each applies to, and the scoring itself (a reference
answer, a JSON schema, a regular expression, a judge model, a Python callable or an HTTP
service). The proxy runs them off the request path; their scores go to the ``scores`` table."""
