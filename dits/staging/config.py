"""The ``[staging]`` section of ``.dits/config``, read once into a validated value.

This module owns the settings of predictive chunk staging and their defaults; units are parsed
by ``dits.config_values``. It reads a ``Config`` it is given and nothing else (no environment,
no CPU count: ``max_concurrent_staging = 0`` is resolved by the engine to the cores but one). A
bad value raises ``ConfigError`` (a ``UsageError``) naming the key and what was expected.
``unknown_keys`` lists keys this version does not know so the CLI can warn about typos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dits.config import Config
from dits.config_values import SectionReader

__all__ = ["KNOWN_KEYS", "StagingConfig", "unknown_keys"]

SECTION: Final = "staging"
MIB: Final = 1024 * 1024
MIN_ANALYSIS_WINDOW: Final = 512  # the first probe alone is 512 bytes (dits.staging.analysis)
MIN_BOUNDARY_LOOKAHEAD: Final = MIB  # below this a 1 MiB-average chunk rarely ends in the read


@dataclass(frozen=True)
class StagingConfig:
    """Predictive staging's settings; every field is documented in docs/configuration.md.

    Attributes:
        max_buffer_size_mb: MiB of memory staged chunks may hold at once (at least 1).
        max_concurrent_staging: staging threads; 0 = one per CPU core but one (resolved by the
            engine).
        staging_queue_depth: the most chunks staged ahead of the wire.
        content_analysis_window: bytes from the middle of a chunk that content analysis
            compresses to predict the chunk's ratio.
        network_prediction_window: seconds of acknowledgements the throughput estimate
            smooths over, and how far ahead its trend is extrapolated.
        chunk_boundary_lookahead: bytes of a file read ahead of the last cut point when
            staging straight from files.
        enable_adaptive_sizing: lookahead depth and stream count follow measurements.
        enable_content_analysis: off = chunks are sent in their at-rest form, unanalysed.
        enable_network_prediction: off = decisions use the smoothed current rate, without
            extrapolating its trend.
        memory_pressure_threshold: fraction of system memory in use above which the lookahead
            shrinks (0 < x <= 1).
    """

    max_buffer_size_mb: int = 256
    max_concurrent_staging: int = 0
    staging_queue_depth: int = 64
    content_analysis_window: int = 16384
    network_prediction_window: float = 2.0
    chunk_boundary_lookahead: int = 16 * MIB
    enable_adaptive_sizing: bool = True
    enable_content_analysis: bool = True
    enable_network_prediction: bool = True
    memory_pressure_threshold: float = 0.85

    @property
    def max_buffer_bytes(self) -> int:
        """``max_buffer_size_mb`` in bytes (MiB, powers of 1024)."""
        return self.max_buffer_size_mb * MIB

    @classmethod
    def from_config(cls, config: Config) -> StagingConfig:
        """Read and validate the ``[staging]`` section.

        Args:
            config: the repository's config; absent keys take their defaults.

        Returns:
            The validated settings.

        Raises:
            ConfigError: a value has the wrong type or is out of range; the message names the
                key (``staging.staging_queue_depth must be ...``).
        """
        r = SectionReader(SECTION, config.section(SECTION))
        return cls(
            max_buffer_size_mb=r.integer("max_buffer_size_mb", 256, minimum=1),
            max_concurrent_staging=r.integer("max_concurrent_staging", 0, minimum=0),
            staging_queue_depth=r.integer("staging_queue_depth", 64, minimum=1),
            content_analysis_window=r.size(
                "content_analysis_window", 16384, minimum=MIN_ANALYSIS_WINDOW
            ),
            network_prediction_window=r.duration("network_prediction_window", 2.0, positive=True),
            chunk_boundary_lookahead=r.size(
                "chunk_boundary_lookahead", 16 * MIB, minimum=MIN_BOUNDARY_LOOKAHEAD
            ),
            enable_adaptive_sizing=r.boolean("enable_adaptive_sizing", True),
            enable_content_analysis=r.boolean("enable_content_analysis", True),
            enable_network_prediction=r.boolean("enable_network_prediction", True),
            memory_pressure_threshold=r.fraction("memory_pressure_threshold", 0.85),
        )


KNOWN_KEYS: Final = frozenset(
    {
        "max_buffer_size_mb",
        "max_concurrent_staging",
        "staging_queue_depth",
        "content_analysis_window",
        "network_prediction_window",
        "chunk_boundary_lookahead",
        "enable_adaptive_sizing",
        "enable_content_analysis",
        "enable_network_prediction",
        "memory_pressure_threshold",
    }
)


def unknown_keys(config: Config) -> list[str]:
    """Full names of ``[staging]`` keys this version does not know (likely typos)."""
    return sorted(f"{SECTION}.{k}" for k in config.section(SECTION) if k not in KNOWN_KEYS)
