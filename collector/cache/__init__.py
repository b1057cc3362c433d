"""The response cache's parts that know nothing of mitmproxy: which requests are the same
(:mod:`.keys`) and where their answers are kept (:mod:`.store`). The proxy stage that serves
and fills it is :mod:`collector.proxy.addons.cache`."""
