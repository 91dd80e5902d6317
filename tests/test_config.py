"""Settings: defaults, sources and their precedence, and clear errors naming the bad key."""

import pytest

from appliance.config import Settings, iter_settings, sections
from appliance.config_loader import env_name, help_texts
from appliance.errors import ConfigError


def test_defaults_match_the_privacy_policy_examples(tmp_path):
    settings = Settings.load(data_dir=tmp_path, environ={})
    privacy = settings.privacy
    assert privacy.log_retention_days == 30
    assert privacy.erase_window_days == 30
    assert privacy.tax_retention_years == 7
    assert privacy.response_window_business_days == 7
    assert privacy.minimum_age == 13
    assert settings.web.host == "127.0.0.1"
    assert settings.web.port == 8000
    assert settings.inference_url == "http://127.0.0.1:8001"


def test_data_dir_from_environment_or_argument(tmp_path):
    from_env = Settings.load(environ={"APPLIANCE_DATA_DIR": str(tmp_path / "a")})
    assert from_env.data_dir == tmp_path / "a"
    explicit = Settings.load(data_dir=tmp_path / "b", environ={"APPLIANCE_DATA_DIR": "x"})
    assert explicit.data_dir == tmp_path / "b"
    assert explicit.paths.database == tmp_path / "b" / "appliance.db"


def test_precedence_file_then_environment_then_overrides(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        '[web]\nport = 9000\nhost = "0.0.0.0"\n[privacy]\noperators = ["Ada", "Grace"]\n'
    )
    settings = Settings.load(data_dir=tmp_path, environ={})
    assert settings.web.port == 9000
    assert settings.privacy.operators == ("Ada", "Grace")
    assert settings.public_url == "http://127.0.0.1:9000"
    settings = Settings.load(data_dir=tmp_path, environ={"APPLIANCE_WEB__PORT": "9100"})
    assert settings.web.port == 9100
    assert settings.web.host == "0.0.0.0"  # noqa: S104
    settings = Settings.load(
        data_dir=tmp_path, environ={"APPLIANCE_WEB__PORT": "9100"}, overrides={"web.port": 9200}
    )
    assert settings.web.port == 9200


def test_inference_port_moves_the_service_and_url_overrides_it(tmp_path):
    moved = Settings.load(data_dir=tmp_path, environ={"APPLIANCE_INFERENCE__PORT": "18001"})
    assert moved.inference_url == "http://127.0.0.1:18001"
    external = Settings.load(
        data_dir=tmp_path, environ={"APPLIANCE_INFERENCE__URL": "http://gpu-box:8080/v1/"}
    )
    assert external.inference_url == "http://gpu-box:8080"


def test_explicit_config_file(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text("[worker]\nworkers = 4\n")
    settings = Settings.load(data_dir=tmp_path, config_file=config, environ={})
    assert settings.worker.workers == 4
    assert settings.config_file == config
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(data_dir=tmp_path, config_file=tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[web]\nprot = 1\n", "unknown setting 'web.prot'"),
        ("[webb]\nport = 1\n", "unknown settings section 'webb'"),
        ('[web]\nport = "eighty"\n', "'web.port' .* must be an integer"),
        ("[web]\nport = 70000\n", "'web.port' .* at most 65535"),
        ("[inference]\nflash_attn = 1\n", "'inference.flash_attn' .* true or false"),
        ('[inference]\nkv_cache_type = "q9"\n', "must be one of f16, q8_0, q4_0"),
        ("port = 1\n", "unknown setting 'port'"),
        ("[web\n", "not valid TOML"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path, toml, message):
    (tmp_path / "appliance.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        Settings.load(data_dir=tmp_path, environ={})
    assert "appliance.toml" in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APPLIANCE_WEB__PROT": "1"}, "unknown setting 'web.prot'.*APPLIANCE_WEB__PROT"),
        ({"APPLIANCE_WEB__PORT": "x"}, "must be an integer, got 'x'"),
        ({"APPLIANCE_INFERENCE__FLASH_ATTN": "maybe"}, "true or false"),
        ({"APPLIANCE_DATABASE__BUSY_TIMEOUT_MS": "100"}, "at least 5000"),
    ],
)
def test_bad_environment_variable_names_it(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(data_dir=tmp_path, environ=env)


def test_environment_values_are_converted(tmp_path):
    settings = Settings.load(
        data_dir=tmp_path,
        environ={
            "APPLIANCE_INFERENCE__FLASH_ATTN": "yes",
            "APPLIANCE_INFERENCE__REQUEST_TIMEOUT_SECONDS": "12.5",
            "APPLIANCE_WEB__TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
            "UNRELATED": "ignored",
        },
    )
    assert settings.inference.flash_attn is True
    assert settings.inference.request_timeout_seconds == 12.5
    assert settings.web.trusted_proxies == ("10.0.0.1", "10.0.0.2")


def test_settings_are_frozen(tmp_path):
    settings = Settings.load(data_dir=tmp_path, environ={})
    with pytest.raises(AttributeError):
        settings.web.port = 1


def test_every_setting_has_help_and_an_env_name():
    names = [name for name, _ in iter_settings()]
    assert len(names) == len(set(names))
    helps = {
        f"{s}.{key}": text for s, cls in sections().items() for key, text in help_texts(cls).items()
    }
    for name, _ in iter_settings():
        assert helps.get(name, "").strip(), name
        assert env_name(name).startswith("APPLIANCE_")


def test_retired_settings_warn_once_and_are_ignored(tmp_path, caplog):
    (tmp_path / "appliance.toml").write_text(
        '[inference]\nengine = "batched"\nprefix_cache_mb = 256\nport = 18002\n'
    )
    with caplog.at_level("WARNING", logger="appliance.config"):
        settings = Settings.load(data_dir=tmp_path, environ={})
    assert settings.inference.port == 18002
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "'inference.engine'" in warnings[0] and "gone and ignored" in warnings[0]
    assert "'inference.prefix_cache_mb'" in warnings[1]


def test_retired_setting_from_the_environment_is_ignored(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="appliance.config"):
        Settings.load(data_dir=tmp_path, environ={"APPLIANCE_INFERENCE__ENGINE": "simple"})
    assert ["APPLIANCE_INFERENCE__ENGINE" in r.getMessage() for r in caplog.records] == [True]


def test_other_unknown_settings_still_fail(tmp_path):
    (tmp_path / "appliance.toml").write_text("[inference]\nengines = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'inference\.engines'"):
        Settings.load(data_dir=tmp_path, environ={})
