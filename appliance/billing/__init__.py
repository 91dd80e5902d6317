"""Billing: prepaid credits in micro-dollars, metering, Stripe top-ups (docs/billing.md;
docs/architecture.md says which module holds what).
"""
