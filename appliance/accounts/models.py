"""What the accounts store returns."""

from dataclasses import dataclass

ROLES = ("owner", "admin", "member")
MANAGERS = ("owner", "admin")


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    status: str
    created_at: str


@dataclass(frozen=True)
class User:
    id: str
    email: str
    operator: bool
    created_at: str
    last_sign_in_at: str | None
    last_account_id: str | None = None


@dataclass(frozen=True)
class Member:
    user_id: str
    email: str
    role: str
    created_at: str


@dataclass(frozen=True)
class Invite:
    id: str
    account_id: str
    email: str
    role: str
    created_at: str
    expires_at: str
    accepted_at: str | None = None
    revoked_at: str | None = None
    declined_at: str | None = None


@dataclass(frozen=True)
class Offer:
    """An open invite as the invited person sees it."""

    id: str
    account_id: str
    account_name: str
    role: str
    invited_by: str | None  # the inviter's email, while they have an account here
    expires_at: str


@dataclass(frozen=True)
class Profile:
    account_id: str
    business_name: str
    intended_use: str
    tone: str
    formality: str
    length: str
    language: str
    age_confirmed: bool
    completed_at: str | None
    skipped_at: str | None
    updated_at: str

    @property
    def pending(self) -> bool:
        """Onboarding has been neither completed nor skipped."""
        return not self.completed_at and not self.skipped_at
