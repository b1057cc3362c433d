"""From what the proxy saw of a call to its stored row (:mod:`.rows`) and its OpenTelemetry
span (:mod:`.spans`)."""
