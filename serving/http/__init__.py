"""The HTTP door: the BentoML service (`service`: routes, auth), its request and response types (`schemas`), how a
request becomes feature rows (`request_features`) and bento packaging
(`bento`). Scoring itself is `serving.scorer`, the same code batch scoring runs."""
