"""Why a score: per-customer reasons (`reasons`: exact TreeSHAP grouped to business attributes, in words), the
table-driven TreeSHAP engine (`treeshap`), and what unlocks a score across the programme (`drivers`)."""
