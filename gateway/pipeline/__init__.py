"""The stages that run on each commit's new readings, in order: detect, summarise, hand-off.

``detect/`` (anomaly events), ``summarise`` (hourly summaries), ``handoff`` (both into the sync
outbox). The gateway service (gateway/service.py) wires them together.
Imports nothing: each module is imported by name.
"""
