"""Privacy as code: content-free logs, the policy, retention, erasure and export.

Each promise of ``shared/PRIVACY.md`` is mapped to its mechanism and test in
``docs/privacy.md``.
"""

# Deletion receipts are a domain of their own below knowledge and chat, which write them;
# privacy verifies and shows them.
from appliance import receipts

__all__ = ["receipts"]
