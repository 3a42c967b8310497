"""``[speculative]`` settings: defaults, units, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dits.config import Config, ConfigError
from dits.speculative.config import (
    DEFAULT_IGNORE_DIRS,
    SpeculativeConfig,
    parse_duration,
    parse_rate,
    parse_size,
    unknown_keys,
)


def config_with(tmp_path: Path, **values: object) -> Config:
    (tmp_path / ".dits").mkdir(exist_ok=True)
    config = Config(tmp_path / ".dits" / "config")
    config.data["speculative"] = dict(values)
    return config


def test_defaults_match_the_documentation(tmp_path: Path) -> None:
    cfg = SpeculativeConfig.from_config(config_with(tmp_path))
    assert cfg == SpeculativeConfig()
    assert cfg.enabled is True
    assert cfg.max_bandwidth == 10_000_000
    assert cfg.priority == "low"
    assert cfg.workers == 2
    assert cfg.chunk_ttl == 72 * 3600
    assert cfg.watch_dirs == ()
    assert cfg.patterns == ()
    assert cfg.ignore_dirs == DEFAULT_IGNORE_DIRS == (".dits", ".git", "node_modules")
    assert cfg.min_file_size == 0
    assert cfg.max_tracked_files == 10_000
    assert cfg.debounce == 2.0
    assert cfg.pause_on_active_edit is True
    assert cfg.active_edit_rate == 100_000_000
    assert cfg.resume_after_idle == 30.0
    assert cfg.include_derived_caches is False
    assert cfg.watch_editors is True
    assert cfg.remote is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20MB/s", 20_000_000),
        ("20M", 20_000_000),
        ("2.5 MB/s", 2_500_000),
        ("160Mbit/s", 20_000_000),
        ("160 Mbps", 20_000_000),
        ("10MiB/s", 10 * 1024 * 1024),
        ("1GB/s", 1_000_000_000),
        ("512k", 512_000),
        ("0", 0),
        (0, 0),
        (1_500_000, 1_500_000),
    ],
)
def test_parse_rate_accepts_common_spellings(text: str | int, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "20MB/h", "MB/s", "1.2.3M", True, -5])
def test_parse_rate_rejects_garbage(text: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16MiB", 16 << 20), ("4M", 4_000_000), ("1.5GB", 1_500_000_000), ("100", 100), (7, 7)],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_refuses_a_rate() -> None:
    with pytest.raises(ValueError):
        parse_size("4MB/s")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72h", 259_200.0),
        ("30m", 1800.0),
        ("45s", 45.0),
        ("500ms", 0.5),
        ("1d", 86_400.0),
        ("1h30m", 5400.0),
        ("2.5", 2.5),
        (3, 3.0),
    ],
)
def test_parse_duration(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "1h30", "-3s", "3 weeks"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_values_with_units_are_read(tmp_path: Path) -> None:
    cfg = SpeculativeConfig.from_config(
        config_with(
            tmp_path,
            max_bandwidth="160Mbit/s",
            chunk_ttl="30m",
            min_file_size="1MiB",
            active_edit_rate="50MB/s",
            debounce="500ms",
            resume_after_idle=10,
            priority="Normal",
            workers=4,
            enabled=False,
            remote="studio",
        )
    )
    assert cfg.max_bandwidth == 20_000_000
    assert cfg.chunk_ttl == 1800.0
    assert cfg.min_file_size == 1 << 20
    assert cfg.active_edit_rate == 50_000_000
    assert cfg.debounce == 0.5
    assert cfg.resume_after_idle == 10.0
    assert cfg.priority == "normal"
    assert cfg.workers == 4
    assert cfg.enabled is False
    assert cfg.remote == "studio"


def test_zero_bandwidth_means_unlimited(tmp_path: Path) -> None:
    assert SpeculativeConfig.from_config(config_with(tmp_path, max_bandwidth=0)).max_bandwidth == 0


def test_watch_dirs_expand_home_and_resolve_relative_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = config_with(tmp_path, watch_dirs=["~/Renders", "/abs/cache", "media"])
    cfg = SpeculativeConfig.from_config(config, home=home)
    assert cfg.watch_dirs == (home / "Renders", Path("/abs/cache"), tmp_path / "media")


def test_ignore_dirs_extend_the_defaults(tmp_path: Path) -> None:
    cfg = SpeculativeConfig.from_config(config_with(tmp_path, ignore_dirs=["Proxies", ".git"]))
    assert cfg.ignore_dirs == (".dits", ".git", "node_modules", "Proxies")


def test_a_single_string_counts_as_a_one_element_list(tmp_path: Path) -> None:
    cfg = SpeculativeConfig.from_config(config_with(tmp_path, patterns="*.wav"))
    assert cfg.patterns == ("*.wav",)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("workers", 0, "at least 1"),
        ("workers", "many", "whole number"),
        ("max_bandwidth", "fast", "rate"),
        ("max_bandwidth", 20, "unit"),  # 20 bytes/s is a forgotten unit, not a setting
        ("active_edit_rate", 0, "unit"),
        ("priority", "high", "'low' or 'normal'"),
        ("chunk_ttl", "0s", "above zero"),
        ("chunk_ttl", "later", "duration"),
        ("enabled", "perhaps", "true or false"),
        ("watch_dirs", [1, 2], "list"),
        ("patterns", [""], "list"),
        ("min_file_size", "big", "size"),
        ("max_tracked_files", -1, "at least 1"),
        ("remote", 5, "name"),
    ],
)
def test_bad_values_raise_a_usage_error_naming_the_key(
    tmp_path: Path, key: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SpeculativeConfig.from_config(config_with(tmp_path, **{key: value}))
    assert f"speculative.{key}" in info.value.message
    assert fragment in info.value.message
    assert info.value.exit_code == 2


def test_config_set_values_round_trip_through_the_file(tmp_path: Path) -> None:
    (tmp_path / ".dits").mkdir()
    config = Config(tmp_path / ".dits" / "config")
    config.set("speculative.max_bandwidth", "20MB/s")
    config.set("speculative.pause_on_active_edit", "false")
    config.set("speculative.watch_dirs", '["~/Exports"]')
    cfg = SpeculativeConfig.from_config(Config(config.path), home=tmp_path)
    assert cfg.max_bandwidth == 20_000_000
    assert cfg.pause_on_active_edit is False
    assert cfg.watch_dirs == (tmp_path / "Exports",)


def test_unknown_keys_are_listed_not_refused(tmp_path: Path) -> None:
    config = config_with(tmp_path, max_bandwith="1MB/s", workers=3)
    assert SpeculativeConfig.from_config(config).workers == 3
    assert unknown_keys(config) == ["speculative.max_bandwith"]
