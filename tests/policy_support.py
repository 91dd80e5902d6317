"""The configurations the privacy policy is checked under, and what it must then say
(shared by tests/privacy/test_policy.py and the browser test of /privacy)."""

from __future__ import annotations

from pathlib import Path

#: What the seed policy said for a hosted service, and no self-hosted box does.
SAAS_ONLY = (
    "Auxen",
    "privacy@example.com",
    "GPU instance",
    "GPU compute providers",
    "marketing site",
    "United States",
    "Dashboard",
    "Model Settings",
)


def configuration(tmp_path: Path, *, tls: bool, claude: bool, billing: bool) -> dict:
    """Settings overrides for TLS, Claude and billing on or off."""
    overrides: dict = {"privacy.log_retention_days": 21, "privacy.erase_window_days": 9}
    if tls:
        for name in ("cert", "key"):
            (tmp_path / f"{name}.pem").write_text("not read: the page only needs the setting")
        overrides |= {
            "web.tls_cert": str(tmp_path / "cert.pem"),
            "web.tls_key": str(tmp_path / "key.pem"),
        }
    if claude:
        overrides["persona.anthropic_api_key"] = "sk-ant-test"
    if billing:
        overrides |= {
            "billing.enabled": True,
            "stripe.secret_key": "sk_test_x",
            "stripe.webhook_secret": "whsec_x",
        }
    return overrides


def statements(*, tls: bool, claude: bool, billing: bool) -> dict[str, bool]:
    """Each statement the page can show, and whether this configuration shows it
    (docs/privacy.md's promise map)."""
    return {
        "All traffic to this appliance is encrypted (HTTPS)": tls,
        "serves plain HTTP: it does not encrypt traffic": not tls,
        "Anthropic (Claude)": claude,
        "Stripe: payment processing": billing,
        "prepaid credit balance": billing,
        "Usage (tokens per request) is metered and shown to your team. Nothing is charged": (
            not billing
        ),
        "No third party receives your data": not claude and not billing,
        "The language model runs on this appliance": True,
        "kept for 21 days": True,
        "erased within 9 days": True,
    }
