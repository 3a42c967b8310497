"""``[staging]`` settings: defaults, units, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dits.config import Config, ConfigError
from dits.staging.config import KNOWN_KEYS, StagingConfig, unknown_keys

MIB = 1024 * 1024


def config_with(tmp_path: Path, **values: object) -> Config:
    (tmp_path / ".dits").mkdir(exist_ok=True)
    config = Config(tmp_path / ".dits" / "config")
    config.data["staging"] = dict(values)
    return config


def test_defaults_match_the_documentation(tmp_path: Path) -> None:
    cfg = StagingConfig.from_config(config_with(tmp_path))
    assert cfg == StagingConfig()
    assert cfg.max_buffer_size_mb == 256
    assert cfg.max_buffer_bytes == 256 * MIB
    assert cfg.max_concurrent_staging == 0
    assert cfg.staging_queue_depth == 64
    assert cfg.content_analysis_window == 16384
    assert cfg.network_prediction_window == 2.0
    assert cfg.chunk_boundary_lookahead == 16 * MIB
    assert cfg.enable_adaptive_sizing is True
    assert cfg.enable_content_analysis is True
    assert cfg.enable_network_prediction is True
    assert cfg.memory_pressure_threshold == 0.85


def test_a_missing_section_gives_the_defaults(tmp_path: Path) -> None:
    assert StagingConfig.from_config(Config(tmp_path / "absent")) == StagingConfig()


def test_every_key_is_read(tmp_path: Path) -> None:
    cfg = StagingConfig.from_config(
        config_with(
            tmp_path,
            max_buffer_size_mb=64,
            max_concurrent_staging=3,
            staging_queue_depth="16",
            content_analysis_window="4KiB",
            network_prediction_window="500ms",
            chunk_boundary_lookahead="16MiB",
            enable_adaptive_sizing=False,
            enable_content_analysis="off",
            enable_network_prediction="no",
            memory_pressure_threshold=0.5,
        )
    )
    assert cfg == StagingConfig(
        max_buffer_size_mb=64,
        max_concurrent_staging=3,
        staging_queue_depth=16,
        content_analysis_window=4096,
        network_prediction_window=0.5,
        chunk_boundary_lookahead=16 * MIB,
        enable_adaptive_sizing=False,
        enable_content_analysis=False,
        enable_network_prediction=False,
        memory_pressure_threshold=0.5,
    )
    assert cfg.max_buffer_bytes == 64 * MIB


def test_plain_numbers_are_bytes_and_seconds(tmp_path: Path) -> None:
    cfg = StagingConfig.from_config(
        config_with(
            tmp_path,
            content_analysis_window=512,
            network_prediction_window=3,
            chunk_boundary_lookahead=MIB,
            memory_pressure_threshold=1,
        )
    )
    assert cfg.content_analysis_window == 512
    assert cfg.network_prediction_window == 3.0
    assert cfg.chunk_boundary_lookahead == MIB
    assert cfg.memory_pressure_threshold == 1.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_buffer_size_mb", 0),
        ("max_buffer_size_mb", "lots"),
        ("max_buffer_size_mb", 1.5),
        ("max_concurrent_staging", -1),
        ("max_concurrent_staging", True),
        ("staging_queue_depth", 0),
        ("content_analysis_window", 511),
        ("content_analysis_window", "big"),
        ("network_prediction_window", 0),
        ("network_prediction_window", "2 fortnights"),
        ("network_prediction_window", -1),
        ("chunk_boundary_lookahead", "512KiB"),
        ("chunk_boundary_lookahead", "8MB/s"),
        ("enable_adaptive_sizing", "maybe"),
        ("enable_content_analysis", 2),
        ("enable_network_prediction", "sometimes"),
        ("memory_pressure_threshold", 0),
        ("memory_pressure_threshold", 1.2),
        ("memory_pressure_threshold", "high"),
        ("memory_pressure_threshold", float("nan")),
        ("memory_pressure_threshold", False),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^staging\.{key} must be "):
        StagingConfig.from_config(config_with(tmp_path, **{key: value}))


def test_unknown_keys_are_reported_with_their_section(tmp_path: Path) -> None:
    config = config_with(tmp_path, staging_queue_depht=8, max_buffer_size_mb=8, zz=1)
    assert unknown_keys(config) == ["staging.staging_queue_depht", "staging.zz"]
    assert unknown_keys(config_with(tmp_path, **dict.fromkeys(KNOWN_KEYS, 1))) == []
