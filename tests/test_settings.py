"""Settings from the environment: parsing, defaults, clear errors, and every field documented."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.settings import Settings, SettingsError, describe


def test_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env({
        "NEWS_MAX_BYTES": "2048", "NEWS_READ_TIMEOUT": "2.5", "NEWS_ALLOW_PRIVATE_ADDRESSES": "yes",
        "NEWS_LOOKBACK_HOURS": "1.5", "NEWS_DATA_DIR": "/tmp/x", "NEWS_SCHEDULE": "*/15 * * * *",
        "NEWS_DATABASE_URL": " ",
    })
    assert settings.max_bytes == 2048 and settings.read_timeout == 2.5 and settings.allow_private_addresses
    assert settings.lookback == timedelta(hours=1.5) and settings.data_dir == Path("/tmp/x")
    assert settings.schedule == "*/15 * * * *" and settings.database_url is None


@pytest.mark.parametrize(("name", "value"), [("NEWS_MAX_BYTES", "lots"), ("NEWS_WORKERS", "0"),
                                             ("NEWS_ALLOW_PRIVATE_ADDRESSES", "perhaps"),
                                             ("NEWS_READ_TIMEOUT", "-1")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_every_setting_has_a_variable_and_a_description() -> None:
    documented = describe()
    assert len(documented) == len(fields(Settings))
    assert all(env.startswith("NEWS_") and doc for env, _default, doc in documented)
    assert len({env for env, _d, _doc in documented}) == len(documented)


def test_cli_reports_a_bad_setting_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEWS_MAX_BYTES", "lots")
    assert main(["feeds", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: NEWS_MAX_BYTES='lots'") and "\n" not in err
