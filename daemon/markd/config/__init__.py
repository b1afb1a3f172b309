"""markd configuration: ``/etc/markd/markd.toml`` plus drop-ins, validated against dataclasses.

One module per job:

``schema.py``
    the frozen dataclasses that *are* the schema (types, defaults, limits, documentation);
``loading.py``
    :func:`load`: the main file, its drop-ins, merging, one :class:`~markd.errors.ConfigError`
    listing every problem with its file, line and key;
``validation.py``
    walking parsed TOML against the dataclasses, with the one validator markd has
    (:mod:`markd.validation`, which the emulators' scenarios use too);
``startup.py``
    what the daemon reads at start beyond the files (the secrets, the proxies built with
    them), judged by :func:`load` with ``for_service=True`` for ``markd`` and ``markctl
    config check`` alike;
``access.py``
    whether the service's user may read each file the daemon opens (``markctl config check``
    run as root);
``lines.py``
    where each key is in a file's text, and how a key path is written;
``output.py``
    :func:`to_dict` and :func:`to_toml` (``markctl config show``);
``reference.py``
    the key table of ``docs/configuration.md`` (:func:`schema_reference`).

Everything callers use is importable from ``markd.config`` itself.
"""

from markd.config.loading import DEFAULT_PATH, DROPIN_SUFFIX, configured_files, load
from markd.config.output import to_dict, to_toml
from markd.config.reference import KeyReference, schema_keys, schema_reference
from markd.config.schema import (
    DEFAULT_SCANNER_NAME,
    DEFAULT_SCANNER_URL,
    SCANNER_NAME_PATTERN,
    ApiConfig,
    CheckConfig,
    CodesConfig,
    Config,
    FiscalConfig,
    LocalModuleConfig,
    LogConfig,
    MarkUnitConfig,
    MetricsConfig,
    OnlineCheckConfig,
    SaleConfig,
    ScannerConfig,
    StoreConfig,
    TerminalConfig,
    TspiotConfig,
    config_warnings,
    default_config,
    sync_proxy_problem,
)

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_SCANNER_NAME",
    "DEFAULT_SCANNER_URL",
    "DROPIN_SUFFIX",
    "SCANNER_NAME_PATTERN",
    "ApiConfig",
    "CheckConfig",
    "CodesConfig",
    "Config",
    "FiscalConfig",
    "KeyReference",
    "LocalModuleConfig",
    "LogConfig",
    "MarkUnitConfig",
    "MetricsConfig",
    "OnlineCheckConfig",
    "SaleConfig",
    "ScannerConfig",
    "StoreConfig",
    "TerminalConfig",
    "TspiotConfig",
    "default_config",
    "configured_files",
    "load",
    "schema_keys",
    "schema_reference",
    "config_warnings",
    "sync_proxy_problem",
    "to_dict",
    "to_toml",
]
