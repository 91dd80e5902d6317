"""Outgoing mail: templates, the file / console / SMTP backends, errors and logs."""

from __future__ import annotations

import logging
import threading

import jinja2
import pytest
from aiosmtpd.controller import Controller
from conftest import free_port, make_settings

from appliance import mail
from appliance.config import Settings
from appliance.errors import ConfigError

ADDRESS = "Ada.Lovelace@Example.com"
CODE = "042917"


def signin_mail(settings: Settings, to: str = ADDRESS, code: str = CODE) -> mail.Mail:
    return mail.compose(settings, "signin_code", to, code=code, minutes=10)


def only(settings: Settings, *backends: str, **overrides) -> Settings:
    return settings.replace(**{"mail.backends": backends}, **overrides)


def to_local_smtp(settings: Settings, *backends: str, port: int, **overrides) -> Settings:
    """``only`` these backends, SMTP going to ``port`` on the loopback, unencrypted."""
    local = {"mail.smtp_host": "127.0.0.1", "mail.smtp_port": port, "mail.smtp_security": "none"}
    return only(settings, *backends, **local, **overrides)


class RecordingHandler:
    """An aiosmtpd handler that keeps every envelope, optionally refusing recipients."""

    def __init__(self, refuse_rcpt: bool = False) -> None:
        self.envelopes = []
        self.refuse_rcpt = refuse_rcpt
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse_rcpt:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


# compose


def test_signin_code_renders_text_and_html(settings):
    message = signin_mail(settings)
    assert message.to == ADDRESS
    assert message.subject == "Your Private AI sign-in code"
    assert f"\n    {CODE}\n" in message.text
    assert "expires in 10 minutes" in message.text
    assert "ignore this email" in message.text
    assert message.html is not None
    assert CODE in message.html
    assert message.html.lstrip().startswith("<!doctype html>")
    assert 'href="http://127.0.0.1:8000/privacy"' in message.html
    assert "Privacy policy</a>" in message.html
    assert "Privacy policy: http://127.0.0.1:8000/privacy" in message.text


def invite(settings, account_name: str, inviter_email: str, link: str):
    return mail.compose(
        settings,
        "invite",
        ADDRESS,
        account_name=account_name,
        inviter_email=inviter_email,
        link=link,
    )


def test_invite_escapes_html_but_not_text(settings):
    message = invite(
        settings, "<b>x</b>", "grace@example.com", "http://127.0.0.1:8000/signin?invite=abc"
    )
    assert "&lt;b&gt;x&lt;/b&gt;" in message.html
    assert "<b>x</b>" not in message.html
    assert '"<b>x</b>"' in message.text
    assert "grace@example.com has invited you" in message.text
    assert "http://127.0.0.1:8000/signin?invite=abc" in message.text
    assert 'href="http://127.0.0.1:8000/signin?invite=abc"' in message.html


def test_invite_without_inviter(settings):
    message = invite(settings, "Acme", "", "http://x/")
    assert 'You have been invited to join the team "Acme"' in message.text


def test_subject_is_one_line_even_with_newlines_in_values(settings):
    message = invite(settings, "Acme\r\nBcc: eve@example.com", "", "http://127.0.0.1:8000/signin")
    assert "\n" not in message.subject and "\r" not in message.subject
    assert message.subject == message.subject.strip()
    assert message.subject == "You're invited to join Acme Bcc: eve@example.com on Private AI"
    # It stays one header when built and sent.
    mail.deliver(only(settings, "file"), message)
    [sent] = mail.outbox_messages(settings)
    assert sent.get_all("Bcc") is None
    assert sent["Subject"] == message.subject


def test_compose_uses_public_url_and_company(tmp_path):
    settings = make_settings(
        tmp_path,
        **{"web.public_url": "https://ai.example.lan/", "privacy.company_legal_name": "A & B"},
    )
    message = signin_mail(settings)
    assert "https://ai.example.lan/privacy" in message.text
    assert 'href="https://ai.example.lan/privacy"' in message.html
    assert "A &amp; B" in message.html
    assert "A & B" in message.text


def test_missing_context_is_an_error(settings):
    with pytest.raises(jinja2.UndefinedError):
        mail.compose(settings, "signin_code", ADDRESS, minutes=10)


def test_unknown_template_is_an_error(settings):
    with pytest.raises(jinja2.TemplateNotFound):
        mail.compose(settings, "no_such_template", ADDRESS)


# file backend


def test_file_backend_writes_a_parseable_eml(settings):
    settings = only(settings, "file")
    assert mail.deliver(settings, signin_mail(settings)) == ["file"]

    files = sorted(settings.paths.outbox.iterdir())
    assert len(files) == 1
    path = files[0]
    assert path.suffix == ".eml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert CODE.encode() in path.read_bytes()  # readable on disk, not base64

    [message] = mail.outbox_messages(settings)
    assert message["From"] == "Private AI <appliance@localhost>"
    assert message["To"] == ADDRESS
    assert message["Subject"] == "Your Private AI sign-in code"
    assert message["Date"].datetime is not None
    assert message["Message-ID"].startswith("<")
    assert message["Message-ID"].endswith("@localhost>")
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    assert f"\n    {CODE}\n" in text
    html = message.get_body(("html",)).get_content()
    assert CODE in html


def test_file_backend_creates_the_outbox_and_keeps_order(tmp_path):
    settings = make_settings(tmp_path / "fresh", **{"mail.backends": ("file",)})
    assert not settings.paths.outbox.exists()
    assert mail.outbox_messages(settings) == []
    for code in ("111111", "222222", "333333"):
        mail.deliver(settings, signin_mail(settings, code=code))
    texts = [m.get_body(("plain",)).get_content() for m in mail.outbox_messages(settings)]
    assert [c for t in texts for c in ("111111", "222222", "333333") if c in t] == [
        "111111",
        "222222",
        "333333",
    ]
    # Only finished messages: no temporary files are left behind.
    assert all(p.name.endswith(".eml") for p in settings.paths.outbox.iterdir())


def test_message_ids_use_the_sender_domain(settings):
    settings = only(settings, "file", **{"mail.sender": "Team AI <ai@corp.example>"})
    mail.deliver(settings, signin_mail(settings))
    mail.deliver(settings, signin_mail(settings))
    first, second = mail.outbox_messages(settings)
    assert first["From"] == "Team AI <ai@corp.example>"
    assert first["Message-ID"].endswith("@corp.example>")
    assert first["Message-ID"] != second["Message-ID"]


def test_text_only_mail_is_not_multipart(settings):
    settings = only(settings, "file")
    mail.deliver(settings, mail.Mail(to=ADDRESS, subject="Plain", text="Just text.\n"))
    [message] = mail.outbox_messages(settings)
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Just text.\n"


# console backend


def test_console_backend_prints_the_message(settings, capsys):
    settings = only(settings, "console")
    assert mail.deliver(settings, signin_mail(settings)) == ["console"]
    out = capsys.readouterr().out
    assert f"To: {ADDRESS}" in out
    assert "Subject: Your Private AI sign-in code" in out
    assert f"    {CODE}" in out
    assert out.count("-" * 72) == 2
    assert not settings.paths.outbox.exists() or not any(settings.paths.outbox.iterdir())


# smtp backend


def test_smtp_backend_sends_to_a_real_server(settings, smtp_server):
    controller, handler = smtp_server
    settings = to_local_smtp(
        settings, "smtp", port=controller.port, **{"mail.smtp_timeout_seconds": 5.0}
    )
    assert mail.deliver(settings, signin_mail(settings)) == ["smtp"]
    assert len(handler.envelopes) == 1
    envelope = handler.envelopes[0]
    assert envelope.mail_from == "appliance@localhost"
    assert envelope.rcpt_tos == [ADDRESS]
    content = envelope.content.decode()
    assert f"\n    {CODE}" in content.replace("\r\n", "\n")
    assert "Content-Type: multipart/alternative" in content


def test_unreachable_smtp_fails_but_file_still_delivers(settings):
    settings = to_local_smtp(
        settings,
        "smtp",
        "file",
        port=free_port(),  # nothing listens there
        **{
            "mail.smtp_user": "ada",
            "mail.smtp_password": "hunter2-secret",
            "mail.smtp_timeout_seconds": 5.0,
        },
    )
    with pytest.raises(mail.MailError) as caught:
        mail.deliver(settings, signin_mail(settings))
    error = caught.value
    text = str(error)
    assert "smtp" in text
    assert "ConnectionRefusedError" in text
    assert "hunter2-secret" not in text
    assert ADDRESS.lower() not in text.lower()
    assert CODE not in text
    assert list(error.failures) == ["smtp"]
    assert error.delivered == ["file"]
    assert len(mail.outbox_messages(settings)) == 1


def test_refused_recipient_is_not_named_in_the_error(settings):
    handler = RecordingHandler(refuse_rcpt=True)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = to_local_smtp(settings, "smtp", port=controller.port)
        with pytest.raises(mail.MailError) as caught:
            mail.deliver(settings, signin_mail(settings))
    finally:
        controller.stop()
    text = str(caught.value)
    assert "SMTPRecipientsRefused" in text
    assert "@" not in text
    assert handler.envelopes == []


def test_failed_backends_can_be_retried_alone(settings, smtp_server):
    controller, handler = smtp_server
    settings = to_local_smtp(settings, "file", "smtp", port=controller.port)
    assert mail.deliver(settings, signin_mail(settings), backends=["smtp"]) == ["smtp"]
    assert len(handler.envelopes) == 1
    assert mail.outbox_messages(settings) == []


# settings


def test_bad_backend_name_is_a_config_error(settings):
    settings = only(settings, "file", "pigeon")
    with pytest.raises(ConfigError, match=r"mail\.backends") as caught:
        mail.deliver(settings, signin_mail(settings))
    assert "pigeon" in str(caught.value)
    with pytest.raises(ConfigError, match="pigeon"):
        mail.check_settings(settings)
    # Nothing was sent through the valid backend either.
    assert mail.outbox_messages(settings) == []


def test_no_backend_is_a_config_error(settings):
    with pytest.raises(ConfigError, match=r"mail\.backends"):
        mail.check_settings(only(settings))


def test_bad_sender_is_a_config_error(settings):
    with pytest.raises(ConfigError, match=r"mail\.sender"):
        mail.check_settings(settings.replace(**{"mail.sender": "not an address"}))


def test_default_settings_pass_the_check(settings):
    mail.check_settings(settings)
    assert settings.mail.backends == ("file", "console")


def test_backends_from_the_environment(tmp_path):
    settings = Settings.load(
        data_dir=tmp_path,
        environ={
            "APPLIANCE_MAIL__BACKENDS": "smtp, file",
            "APPLIANCE_MAIL__SMTP_PASSWORD": "from-env",
            "APPLIANCE_MAIL__SMTP_PORT": "465",
        },
    )
    assert settings.mail.backends == ("smtp", "file")
    assert settings.mail.smtp_password == "from-env"
    assert settings.mail.smtp_port == 465
    mail.check_settings(settings)


def test_bad_smtp_security_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"mail\.smtp_security"):
        make_settings(tmp_path, **{"mail.smtp_security": "ssl"})


# logs


def test_info_log_names_no_address_subject_or_code(settings, caplog):
    settings = only(settings, "file", "console")
    message = signin_mail(settings)
    with caplog.at_level(logging.INFO, logger="appliance.mail"):
        mail.deliver(settings, message)
    records = [r for r in caplog.records if r.name == "appliance.mail"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    line = records[0].getMessage()
    assert mail.recipient_ref(ADDRESS) in line
    assert "file" in line and "console" in line
    assert ADDRESS.lower() not in line.lower()
    assert "lovelace" not in line.lower()
    assert message.subject not in line
    assert CODE not in line


def test_recipient_ref_ignores_case():
    assert mail.recipient_ref("Ada@Example.com") == mail.recipient_ref("ada@example.com")
    assert len(mail.recipient_ref("ada@example.com")) == 12


def test_password_is_not_in_the_settings_repr(tmp_path):
    settings = Settings.load(
        data_dir=tmp_path, environ={"APPLIANCE_MAIL__SMTP_PASSWORD": "hunter2-secret"}
    )
    assert settings.mail.smtp_password == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)
