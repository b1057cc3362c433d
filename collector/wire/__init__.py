"""Wire formats: server-sent events (:mod:`.sse`), AWS event streams (:mod:`.eventstream`),
content decoding (:mod:`.decoding`), headers (:mod:`.headers`), bodies as JSON
(:mod:`.bodies`) and mitmproxy's stream callables (:mod:`.streams`)."""
