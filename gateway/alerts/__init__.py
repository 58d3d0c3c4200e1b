"""Alerts: anomaly events to the people who act, by e-mail, webhook and ntfy push (docs/alerts.md).

``outbox`` decides (routing, one message per node and kind, the hourly cap, the daily digest,
closing messages) and keeps the messages in the gateway database; ``sender`` delivers them;
``transports`` speaks SMTP and HTTP; ``messages`` writes them in French.
"""
