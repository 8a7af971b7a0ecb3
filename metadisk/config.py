"""
The node's configuration: embedded defaults, a TOML file, then command-line
overrides, validated when the node starts.

Each TOML section is one frozen attrs class below, its fields named as the
TOML keys, each with the converter and validators its values need; a new key
is one field. L{config_from_dict} loads any section the same way. A bad value
raises L{ConfigError} naming the key (C{section.key}), which the plugin
prints as one line.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attrs import Attribute, evolve, field, fields, fields_dict, frozen

from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET

MAX_BYTES = 2**53
# Records of a manifest: metadisk.chain.codec.MAX_MANIFEST_RECORDS, which this module cannot
# import (metadisk.chain imports it); a test holds the two equal.
MANIFEST_RECORDS = 50_000

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(Exception):
    """A configuration value is missing or invalid. C{str()} is one line naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key


class Invalid(ValueError):
    """What is wrong with a value, said without its key: the loader names the key."""


# Converters and validators. A converter turns the TOML value into the field's type and must
# accept what it returns (attrs runs it again on evolve); a validator checks the result.

Validator = Callable[[Any, Attribute, Any], None]


def size(value: Any) -> int:
    """A byte count: a whole number, or a string such as C{"10 GiB"}."""
    if isinstance(value, bool):
        raise Invalid(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        unit = _UNITS.get(m.group(2).lower())
        if unit is None:
            raise Invalid(f"unknown unit {m.group(2)!r} (use B, KB, MB, GB, KiB, MiB, GiB…)")
        number = int(float(m.group(1)) * unit)
    else:
        raise Invalid(f"expected a size in bytes, got {value!r}")
    if number < 0 or number > MAX_BYTES:
        raise Invalid(f"out of range: {value!r}")
    return number


def _not_zero(_: Any, __: Attribute, value: int) -> None:
    if value == 0:
        raise Invalid("out of range: 0")


def whole(minimum: int, maximum: int | None = None) -> Validator:
    """A whole number from C{minimum} (to C{maximum})."""

    def check(_: Any, __: Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Invalid(f"expected a whole number >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise Invalid(f"at most {maximum}")

    return check


def number(minimum: float) -> Validator:
    """A number (whole or not) from C{minimum}."""

    def check(_: Any, __: Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise Invalid(f"expected a number >= {minimum}, got {value!r}")

    return check


def _string(_: Any, __: Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {value!r}")


def _not_empty(_: Any, __: Attribute, value: str) -> None:
    if not value:
        raise Invalid("must not be empty")


def _boolean(_: Any, __: Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise Invalid("expected true or false")


def one_of(*choices: str) -> Validator:
    def check(_: Any, __: Attribute, value: Any) -> None:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {value!r}")

    return check


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a path, got {value!r}")
    return Path(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise Invalid("expected a list of strings")
    return tuple(value)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str | Network]) -> tuple[Network, ...]:
    """Networks from their CIDR notation (C{"127.0.0.0/8"}); a ValueError for a bad one."""
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def _networks(value: Any) -> tuple[Network, ...]:
    """A list of networks in CIDR notation (C{"10.0.0.0/8"}, C{"::1/128"}), each checked."""
    kinds = (str, ipaddress.IPv4Network, ipaddress.IPv6Network)  # strings, or what they become
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kinds) for v in value):
        raise Invalid('expected a list of networks such as "10.0.0.0/8"')
    try:
        return networks(value)
    except (TypeError, ValueError) as e:
        raise Invalid(str(e)) from None


def _secret(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value:
        raise Invalid("must not be empty")
    return value.encode("utf-8")


def _secret_key(_: Any, __: Attribute, value: str) -> None:
    if value and len(value) < 16:
        raise Invalid("use at least 16 characters")


def _database_url(_: Any, __: Attribute, value: str) -> None:
    if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise Invalid("expected sqlite:///PATH or postgresql://…")


def _local_endpoint(_: Any, __: Attribute, value: str) -> None:
    """
    A server endpoint string that only this machine can reach: C{unix:PATH},
    or C{tcp:}/C{tcp6:}/C{ssl:} bound to a loopback C{interface}. Empty is
    allowed (no such listener).
    """
    if not value:
        return
    # Endpoint strings escape ':' with a backslash (an IPv6 interface, for one).
    parts = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", value)]
    if parts[0] == "unix":
        return
    interface = next(
        (f.removeprefix("interface=") for f in parts[1:] if f.startswith("interface=")), None
    )
    if parts[0] in ("tcp", "tcp6", "ssl") and interface is not None:
        try:
            if interface == "localhost" or ipaddress.ip_address(interface).is_loopback:
                return
        except ValueError:
            pass
    raise Invalid("must be local only: unix:PATH or tcp:PORT:interface=127.0.0.1 (or ::1)")


def _public_url(_: Any, __: Attribute, value: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise Invalid("expected http://… or https://…, where the folder is served")


def _chain_url(_: Any, __: Attribute, value: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise Invalid("expected http://[user:password@]host:port or https://…")


# The sections.


@frozen
class NodeConfig:
    listen: str = field(default="tcp:8080:interface=127.0.0.1", validator=_string)
    data_dir: Path = field(default=Path("metadisk-data"), converter=_path)
    secret_key: str = field(default="", validator=[_string, _secret_key])  # "": generated
    cors_origins: tuple[str, ...] = field(default=(), converter=_strings)
    # The private API's own local-only listener; "": served on `listen` too.
    private_listen: str = field(default="", validator=[_string, _local_endpoint])
    # Bytes of uploads not paid for yet (no token so far, or accounts disabled), node-wide.
    unpaid_upload_bytes: int = field(default=64 * 2**20, converter=size)
    # Seconds a client has to send a request line and headers (from the connection's start,
    # or from the end of the previous response on a kept-alive connection).
    header_timeout: float = field(default=30.0, validator=number(0.1))
    # Open connections one client address may hold; the next one gets 429.
    max_connections_per_address: int = field(default=64, validator=whole(1))
    # Proxies whose X-Forwarded-For names the client (CIDR networks); none by default.
    trusted_proxies: tuple[Network, ...] = field(default=(), converter=_networks)


@frozen
class DatabaseConfig:
    url: str = field(default="", validator=[_string, _database_url])  # "": SQLite in data_dir


@frozen
class StorageConfig:
    capacity: int = field(default=10 * 2**30, converter=size, validator=_not_zero)
    max_file_size: int = field(default=2 * 2**30, converter=size, validator=_not_zero)


@frozen
class BandwidthConfig:
    """Bytes per second, and bytes per calendar month; 0: no limit."""

    rate_incoming: int = field(default=0, converter=size)
    rate_outgoing: int = field(default=0, converter=size)
    per_transfer_incoming: int = field(default=0, converter=size)
    per_transfer_outgoing: int = field(default=0, converter=size)
    monthly_incoming: int = field(default=0, converter=size)
    monthly_outgoing: int = field(default=0, converter=size)


@frozen
class AccountsConfig:
    enabled: bool = field(default=True, validator=_boolean)
    guess_limit: int = field(default=20, validator=whole(1))  # unknown tokens per window
    guess_window: int = field(default=60, validator=whole(1))  # seconds


@frozen
class CryptoConfig:
    convergence_secret: bytes = field(default=DEFAULT_CONVERGENCE_SECRET, converter=_secret)


@frozen
class ReplicationConfig:
    copies: int = field(default=3, validator=whole(1))
    interval: float = field(default=1.0, validator=number(0.05))  # seconds between sync rounds
    repair_interval: float = field(default=60.0, validator=number(1))  # seconds
    repair_sample: int = field(default=20, validator=whole(0, 10_000))  # copies a round; 0: none


@frozen
class ChainConfig:
    kind: str = field(default="none", validator=one_of("none", "florincoin", "litecoin"))
    url: str = field(default="", validator=[_string, _chain_url])
    min_confirmations: int = field(default=1, validator=whole(0))
    poll_interval: float = field(default=30.0, validator=number(0.1))
    address: str = field(default="F94Vd1E6Hx2uhntGRo8mn3aJvQLS4KXmSA", validator=_string)
    amount: float = field(default=0.05, validator=number(0))
    timeout: float = field(default=30.0, validator=number(0.1))  # seconds, every RPC call
    rescan_depth: int = field(default=10, validator=whole(1, 10_000))  # blocks re-checked
    start_height: int = field(default=0, validator=whole(0, 2**31))  # a new node's first block
    # Seconds before a record goes out with fewer than `copies` hosts.
    publish_wait: float = field(default=3600.0, validator=number(0))
    # v0.3 (docs/protocol.md 5.9): "auto" sends records_per_manifest due records or more as
    # one manifest, fewer inline once one has waited manifest_wait; "0.2": always inline.
    format: str = field(default="auto", validator=one_of("auto", "0.2"))
    records_per_manifest: int = field(default=100, validator=whole(1, MANIFEST_RECORDS))
    manifest_wait: float = field(default=600.0, validator=number(0))  # seconds
    manifest_max_records: int = field(default=50_000, validator=whole(1, MANIFEST_RECORDS))
    # Addresses a record's URL may lead to although they are not public (tests: loopback).
    fetch_allowed_networks: tuple[Network, ...] = field(default=(), converter=_networks)


@frozen
class UploadsConfig:
    """Resumable uploads (the tus protocol, at /api/tus/)."""

    # Seconds an upload may take from its creation; then it is removed and its credit refunded.
    resumable_expiry: float = field(default=86400.0, validator=number(60))
    # Unfinished resumable uploads one token may hold at once.
    resumable_per_token: int = field(default=8, validator=whole(1, 10_000))


_HOST_SETTING = {"local": "path", "rclone": "remote", "plowshare": "site"}


@frozen
class HostConfig:
    """One C{[[hosts]]} table: a name, a kind, and the one setting of that kind."""

    name: str = field(validator=_string)
    kind: str = field(validator=one_of(*_HOST_SETTING))
    path: str = field(default="", validator=_string)  # local: a directory
    # local: where a web server serves that directory; "": its copies have no public URL
    public_url: str = field(default="", validator=[_string, _public_url])
    remote: str = field(default="", validator=_string)  # rclone: a remote string
    site: str = field(default="", validator=_string)  # plowshare: a module name

    @property
    def setting(self) -> str:
        """The setting of this host's kind: its path, remote or site."""
        return str(getattr(self, _HOST_SETTING[self.kind]))


@frozen
class Config:
    node: NodeConfig = NodeConfig()
    database: DatabaseConfig = DatabaseConfig()
    storage: StorageConfig = StorageConfig()
    bandwidth: BandwidthConfig = BandwidthConfig()
    accounts: AccountsConfig = AccountsConfig()
    crypto: CryptoConfig = CryptoConfig()
    replication: ReplicationConfig = ReplicationConfig()
    chain: ChainConfig = ChainConfig()
    uploads: UploadsConfig = UploadsConfig()
    hosts: tuple[HostConfig, ...] = ()  # empty: three local hosts in the data dir

    @property
    def effective_database_url(self) -> str:
        url = self.database.url
        return url or f"sqlite:///{(self.node.data_dir / 'metadisk.sqlite').resolve()}"

    @property
    def effective_hosts(self) -> tuple[HostConfig, ...]:
        if self.hosts:
            return self.hosts
        root = self.node.data_dir / "hosts"
        return tuple(
            HostConfig(name=f"local{i}", kind="local", path=str((root / f"local{i}").resolve()))
            for i in (1, 2, 3)
        )


# Loading.


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "expected a table")
    return value


def load_section(where: str, data: Any, base: Any, allowed: set[str] | None = None) -> Any:
    """
    C{base} (an attrs section) with the TOML table C{data} applied: each key
    must be one of its fields (and of C{allowed}, if given), each value passes
    the field's converter and validators.
    """
    known = fields_dict(type(base))
    changes = {}
    for key, value in _table(where, data).items():
        if key not in known or (allowed is not None and key not in allowed):
            raise ConfigError(f"{where}.{key}", "unknown key")
        attribute = known[key]
        try:
            if attribute.converter is not None:
                value = attribute.converter(value)
            if attribute.validator is not None:
                attribute.validator(None, attribute, value)
        except Invalid as e:
            raise ConfigError(f"{where}.{key}", str(e)) from None
        changes[key] = value
    return evolve(base, **changes)


def _hosts(data: Any) -> tuple[HostConfig, ...]:
    if not isinstance(data, list):
        raise ConfigError("hosts", "expected [[hosts]] tables")
    hosts = []
    for i, entry in enumerate(data):
        where = f"hosts[{i}]"
        entry = _table(where, entry)
        for key in ("name", "kind"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}", "required")
        stub = load_section(where, {"name": entry["name"], "kind": entry["kind"]}, _STUB_HOST)
        if not _HOST_NAME.fullmatch(stub.name):
            raise ConfigError(f"{where}.name", "use 1-64 letters, digits, '_', '.' or '-'")
        setting = _HOST_SETTING[stub.kind]
        allowed = {"name", "kind", setting, *(("public_url",) if stub.kind == "local" else ())}
        host = load_section(where, entry, stub, allowed=allowed)
        if not host.setting:
            raise ConfigError(f"{where}.{setting}", "must not be empty")
        hosts.append(host)
    names = [h.name for h in hosts]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("hosts", f"two hosts are named {name!r}")
    return tuple(hosts)


_STUB_HOST = HostConfig(name="-", kind="local")
_SECTIONS = {f.name for f in fields(Config)} - {"hosts"}


def config_from_dict(data: dict[str, Any], base: Config = Config()) -> Config:
    """Apply the TOML document C{data} over C{base}, validating every value."""
    changes: dict[str, Any] = {}
    for section, value in data.items():
        if section == "hosts":
            changes["hosts"] = _hosts(value)
        elif section in _SECTIONS:
            changes[section] = load_section(section, value, getattr(base, section))
        else:
            raise ConfigError(section, "unknown section")
    config = evolve(base, **changes)
    _check_whole(config)
    return config


def _check_whole(config: Config) -> None:
    """What one key alone cannot tell: how keys of a section, or of several, fit together."""
    private = config.node.private_listen
    # The same endpoint twice can only listen twice on port 0 (each gets a free port).
    if private and private == config.node.listen and not re.match(r"\w+:0(:|$)", private):
        raise ConfigError("node.private_listen", "must differ from node.listen")
    if config.storage.max_file_size > config.storage.capacity:
        raise ConfigError("storage.max_file_size", "must not exceed storage.capacity")
    hosts = config.effective_hosts
    if config.replication.copies > len(hosts):
        raise ConfigError(
            "replication.copies",
            f"{config.replication.copies} copies need at least as many hosts, have {len(hosts)}",
        )
    if config.chain.kind != "none" and not config.chain.url:
        raise ConfigError("chain.url", f"required for chain kind {config.chain.kind!r}")


def load_config(
    path: str | None = None,
    *,
    listen: str | None = None,
    data_dir: str | None = None,
) -> Config:
    """Defaults, then the TOML file at C{path}, then the command-line overrides."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None
    overrides = {"listen": listen, "data_dir": data_dir}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides:
        data = {**data, "node": {**_table("node", data.get("node", {})), **overrides}}
    return config_from_dict(data)
