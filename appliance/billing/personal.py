"""What billing holds of an account (``appliance.personal``), and its purge.

Billing rows are not erased with the account: they are pseudonymized when it is locked
(``service.pseudonymize_account``, called by the erasure request) and kept for
``privacy.tax_retention_years``, then purged.
"""

from __future__ import annotations

from datetime import datetime

from appliance import personal
from appliance.clock import iso, years_before
from appliance.config import Settings
from appliance.personal import PSEUDONYMIZE, USERS, Table

#: Billing tables: name → (column holding the account reference, column holding the
#: row's time).
KEPT = {
    "ledger_entries": ("account_ref", "created_at"),
    "billing_topups": ("account_ref", "created_at"),
    "stripe_events": ("account_ref", "received_at"),
    "billing_accounts": ("account_ref", "updated_at"),
    "billing_holds": ("account_ref", "created_at"),
    "spend_caps": ("account_ref", "updated_at"),
    "instance_meter": ("account_ref", "charged_until"),
    "spend_months": ("account_ref", "month"),
}

TABLES = tuple(
    Table(
        name,
        f"{ref} = :account",
        f"requested_by in {USERS}" if name == "billing_topups" else None,
        PSEUDONYMIZE,
        True,
        note="account reference replaced, card details and actors cleared",
    )
    for name, (ref, _) in KEPT.items()
)


# Rows are exported; none is erased (all PSEUDONYMIZE: see above).
export, erase = personal.plain(TABLES)


def purge_billing(db, settings: Settings, now: datetime, budget, on_batch):
    """Pseudonymized billing records (of erased accounts) past
    ``privacy.tax_retention_years``, each by its own date; live accounts' are kept."""
    cutoff = iso(years_before(now, settings.privacy.tax_retention_years))
    total = 0
    for table, (ref, at) in KEPT.items():
        where = f"{ref} like 'erased\\_%' escape '\\' and {at} < ?"
        deleted, complete = personal.batched_delete(
            db, table, where, [cutoff], settings, budget, on_batch
        )
        total += deleted
        if not complete:
            return total, False
    return total, True


PURGES: dict[str, personal.Purge] = {"billing": purge_billing}
