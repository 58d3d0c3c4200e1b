"""Sync: the outbox of hourly summaries and anomaly events, and the worker that sends it to
the municipal platform (SensorThings API by default, MQTT optionally) within a byte budget.

The gateway service (gateway/service.py) wires it: its outbox stage hands the summarise and
detect tables to the outbox (:func:`gateway.pipeline.handoff.feed_outbox`, which calls
:func:`~gateway.sync.outbox.enqueue_summaries` and :func:`~gateway.sync.outbox.enqueue_events`),
and it starts one :class:`~gateway.sync.service.SyncService` and calls its ``notify()`` after
each hand-over.

Modules: ``config`` (``[sync]``), ``outbox``, ``budget``, ``worker``, ``sensorthings`` and
``mqtt`` (targets), ``raw`` and ``raw_spans`` (raw readings), ``service`` (wiring and status),
``report`` (what operators read). Imports nothing: the store's writer process unpickles
``raw_spans`` alone.
"""
