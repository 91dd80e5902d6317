"""Domain errors.

Domains raise these; ``appliance.web.errors`` maps them to HTTP statuses in one place.
Messages are shown to the user, so they never contain secrets or user content that the
caller did not send themselves.
"""


class ApplianceError(Exception):
    """Base class of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """A setting is unknown, of the wrong type or out of range, or the data dir is unusable."""


class DatabaseError(ApplianceError):
    """The database cannot be opened or prepared (e.g. sqlite-vec does not load)."""


class NotFound(ApplianceError):
    """The object does not exist, or belongs to someone else (never say which)."""


class NotAllowed(ApplianceError):
    """The object is visible to the actor, but this action on it is not theirs to take
    (403); the message says who may."""


class InvalidInput(ApplianceError):
    """The request is well-formed but its content is not acceptable."""


class Conflict(ApplianceError):
    """The request conflicts with the current state (e.g. already done)."""


class PaymentRequired(ApplianceError):
    """Out of prepaid credit, or a monthly spend cap is reached (402)."""


class TooLarge(ApplianceError):
    """An upload is over a size limit or a quota (413)."""


class Throttled(ApplianceError):
    """Too many requests; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApplianceError):
    """A dependency (the inference service, the database) is not answering."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
