"""Privacy as code: content-free logs, the policy, retention, erasure and export.

Each promise of ``shared/PRIVACY.md`` is mapped to its mechanism and test in
``docs/privacy.md``.
"""
