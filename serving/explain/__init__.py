"""Why a score: per-customer reasons (`reasons`: exact TreeSHAP grouped to business attributes, in words), the
and what unlocks a score across the programme (`drivers`)."""
