"""Spend limits: UTC periods (:mod:`.periods`), what a budget covers and has spent
(:mod:`.limits`), and its alerts (:mod:`.alerts`). The proxy stage that enforces them is
:mod:`collector.proxy.addons.budget_guard`."""
