"""Routing rules and their evidence: the rules file (:mod:`.rules`), comparing two answers
(:mod:`.compare`), and shadow evaluation of stored calls (:mod:`.evaluate`). The proxy
stages that apply them are :mod:`collector.proxy.addons.router` and
:mod:`collector.proxy.addons.comparison`."""
