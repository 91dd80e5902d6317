"""Billing: prepaid credits in micro-dollars, metering, Stripe top-ups (docs/billing.md).

- ``ledger``: the append-only ledger and the balance;
- ``meter``: reserve / settle / release for requests, instance time, storage;
- ``payments``: Stripe Checkout, webhooks, reconciliation, automatic top-ups;
- ``service``: reports, spend caps, adjustments, notices, pseudonymization;
- ``personal``: what billing holds of an account, for export, erasure and retention.
"""
