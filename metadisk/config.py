"""
The node's configuration: embedded defaults, a TOML file, then command-line
overrides. Everything is validated when the node starts; a bad value raises
L{ConfigError} naming the key, which the plugin prints as one line.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrs import evolve, field, frozen

from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET

MAX_BYTES = 2**53

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


class ConfigError(Exception):
    """A configuration value is missing or invalid. C{str()} is one line naming the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key


@frozen
class HostConfig:
    name: str
    kind: str  # "local" | "rclone" | "plowshare"
    setting: str  # path, remote or site, according to kind


def networks(cidrs: Iterable[str | Network]) -> tuple[Network, ...]:
    """Networks from their CIDR notation (C{"127.0.0.0/8"}); a ValueError for a bad one."""
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


@frozen
class ChainConfig:
    kind: str = "none"  # "none" | "florincoin" | "litecoin"
    url: str = ""
    min_confirmations: int = 1
    poll_interval: float = 30.0
    address: str = "F94Vd1E6Hx2uhntGRo8mn3aJvQLS4KXmSA"
    amount: float = 0.05
    timeout: float = 30.0  # seconds, every RPC call
    rescan_depth: int = 10  # last blocks re-checked for reorganisations
    start_height: int = 0  # the first block a new node reads
    publish_wait: float = 3600.0  # seconds before a record goes out with fewer than `copies` hosts
    # Addresses a record's URL may lead to although they are not public (tests: loopback).
    fetch_allowed_networks: tuple[Network, ...] = field(default=(), converter=networks)


@frozen
class Config:
    listen: str = "tcp:8080:interface=127.0.0.1"
    data_dir: Path = Path("metadisk-data")
    secret_key: str = ""  # empty: generated into the data dir on first start
    cors_origins: tuple[str, ...] = ()
    private_listen: str = ""  # empty: the private API is served on `listen` too
    database_url: str = ""  # empty: SQLite in the data dir
    capacity: int = 10 * 2**30
    max_file_size: int = 2 * 2**30
    rate_incoming: int = 0
    rate_outgoing: int = 0
    per_transfer_incoming: int = 0
    per_transfer_outgoing: int = 0
    monthly_incoming: int = 0
    monthly_outgoing: int = 0
    accounts_enabled: bool = True
    guess_limit: int = 20  # unknown tokens one address may present per window
    guess_window: int = 60  # seconds
    convergence_secret: bytes = DEFAULT_CONVERGENCE_SECRET
    hosts: tuple[HostConfig, ...] = field(default=())  # empty: three local hosts in the data dir
    copies: int = 3
    sync_interval: float = 1.0
    repair_interval: float = 60.0  # seconds between repair rounds
    repair_sample: int = 20  # stored copies checked per round; 0: no repair
    chain: ChainConfig = ChainConfig()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'metadisk.sqlite').resolve()}"

    @property
    def effective_hosts(self) -> tuple[HostConfig, ...]:
        if self.hosts:
            return self.hosts
        root = self.data_dir / "hosts"
        return tuple(
            HostConfig(name=f"local{i}", kind="local", setting=str((root / f"local{i}").resolve()))
            for i in (1, 2, 3)
        )


def parse_size(key: str, value: Any, *, allow_zero: bool = True) -> int:
    """A byte count: a whole number, or a string such as C{"10 GiB"}."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        unit = _UNITS.get(m.group(2).lower())
        if unit is None:
            raise ConfigError(
                key, f"unknown unit {m.group(2)!r} (use B, KB, MB, GB, KiB, MiB, GiB…)"
            )
        number = int(float(m.group(1)) * unit)
    else:
        raise ConfigError(key, f"expected a size in bytes, got {value!r}")
    if number < 0 or number > MAX_BYTES or (number == 0 and not allow_zero):
        raise ConfigError(key, f"out of range: {value!r}")
    return number


def _number(key: str, value: Any, *, minimum: float, integer: bool = False) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(key, f"expected {kind} >= {minimum}, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, "expected a table")
    return value


_KNOWN = {
    "node": {"listen", "data_dir", "secret_key", "cors_origins", "private_listen"},
    "database": {"url"},
    "storage": {"capacity", "max_file_size"},
    "bandwidth": {
        "rate_incoming",
        "rate_outgoing",
        "per_transfer_incoming",
        "per_transfer_outgoing",
        "monthly_incoming",
        "monthly_outgoing",
    },
    "accounts": {"enabled", "guess_limit", "guess_window"},
    "crypto": {"convergence_secret"},
    "replication": {"copies", "interval", "repair_interval", "repair_sample"},
    "chain": {
        "kind",
        "url",
        "min_confirmations",
        "poll_interval",
        "address",
        "amount",
        "timeout",
        "rescan_depth",
        "start_height",
        "publish_wait",
        "fetch_allowed_networks",
    },
}
_HOST_SETTING = {"local": "path", "rclone": "remote", "plowshare": "site"}


def _check_keys(data: dict[str, Any]) -> None:
    for section, value in data.items():
        if section == "hosts":
            continue
        if section not in _KNOWN:
            raise ConfigError(section, "unknown section")
        for key in _table(section, value):
            if key not in _KNOWN[section]:
                raise ConfigError(f"{section}.{key}", "unknown key")


def _hosts(data: Any) -> tuple[HostConfig, ...]:
    if not isinstance(data, list):
        raise ConfigError("hosts", "expected [[hosts]] tables")
    hosts = []
    for i, entry in enumerate(data):
        where = f"hosts[{i}]"
        entry = _table(where, entry)
        kind = _string(f"{where}.kind", entry.get("kind"))
        if kind not in _HOST_SETTING:
            raise ConfigError(
                f"{where}.kind", f"expected one of {sorted(_HOST_SETTING)}, got {kind!r}"
            )
        setting_key = _HOST_SETTING[kind]
        allowed = {"name", "kind", setting_key}
        for key in entry:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}", f"unknown key for a {kind} host")
        name = _string(f"{where}.name", entry.get("name"))
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(f"{where}.name", "use 1-64 letters, digits, '_', '.' or '-'")
        setting = _string(f"{where}.{setting_key}", entry.get(setting_key))
        if not setting:
            raise ConfigError(f"{where}.{setting_key}", "must not be empty")
        hosts.append(HostConfig(name=name, kind=kind, setting=setting))
    names = [h.name for h in hosts]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("hosts", f"two hosts are named {name!r}")
    return tuple(hosts)


def config_from_dict(data: dict[str, Any], base: Config = Config()) -> Config:
    """Apply the TOML document C{data} over C{base}, validating every value."""
    _check_keys(data)
    changes: dict[str, Any] = {}
    node = data.get("node", {})
    if "listen" in node:
        changes["listen"] = _string("node.listen", node["listen"])
    if "data_dir" in node:
        changes["data_dir"] = Path(_string("node.data_dir", node["data_dir"]))
    if "secret_key" in node:
        secret = _string("node.secret_key", node["secret_key"])
        if secret and len(secret) < 16:
            raise ConfigError("node.secret_key", "use at least 16 characters")
        changes["secret_key"] = secret
    if "cors_origins" in node:
        origins = node["cors_origins"]
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ConfigError("node.cors_origins", "expected a list of origins")
        changes["cors_origins"] = tuple(origins)
    if "private_listen" in node:
        changes["private_listen"] = local_endpoint(
            "node.private_listen", _string("node.private_listen", node["private_listen"])
        )
    if "url" in data.get("database", {}):
        url = _string("database.url", data["database"]["url"])
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError("database.url", "expected sqlite:///PATH or postgresql://…")
        changes["database_url"] = url
    storage = data.get("storage", {})
    if "capacity" in storage:
        changes["capacity"] = parse_size("storage.capacity", storage["capacity"], allow_zero=False)
    if "max_file_size" in storage:
        changes["max_file_size"] = parse_size(
            "storage.max_file_size", storage["max_file_size"], allow_zero=False
        )
    for key, value in data.get("bandwidth", {}).items():
        changes[key] = parse_size(f"bandwidth.{key}", value)
    accounts = data.get("accounts", {})
    if "enabled" in accounts:
        if not isinstance(accounts["enabled"], bool):
            raise ConfigError("accounts.enabled", "expected true or false")
        changes["accounts_enabled"] = accounts["enabled"]
    for key in ("guess_limit", "guess_window"):
        if key in accounts:
            changes[key] = _number(f"accounts.{key}", accounts[key], minimum=1, integer=True)
    if "convergence_secret" in data.get("crypto", {}):
        secret = _string("crypto.convergence_secret", data["crypto"]["convergence_secret"])
        if not secret:
            raise ConfigError("crypto.convergence_secret", "must not be empty")
        changes["convergence_secret"] = secret.encode("utf-8")
    if "hosts" in data:
        changes["hosts"] = _hosts(data["hosts"])
    replication = data.get("replication", {})
    if "copies" in replication:
        changes["copies"] = _number(
            "replication.copies", replication["copies"], minimum=1, integer=True
        )
    if "interval" in replication:
        changes["sync_interval"] = _number(
            "replication.interval", replication["interval"], minimum=0.05
        )
    if "repair_interval" in replication:
        changes["repair_interval"] = _number(
            "replication.repair_interval", replication["repair_interval"], minimum=1
        )
    if "repair_sample" in replication:
        changes["repair_sample"] = _number(
            "replication.repair_sample", replication["repair_sample"], minimum=0, integer=True
        )
        if changes["repair_sample"] > 10_000:
            raise ConfigError("replication.repair_sample", "at most 10000")
    if "chain" in data:
        changes["chain"] = _chain(data["chain"], base.chain)
    config = evolve(base, **changes)
    _check_whole(config)
    return config


def _chain(data: dict[str, Any], base: ChainConfig) -> ChainConfig:
    changes: dict[str, Any] = {}
    if "kind" in data:
        kind = _string("chain.kind", data["kind"])
        if kind not in ("none", "florincoin", "litecoin"):
            raise ConfigError("chain.kind", f"expected none, florincoin or litecoin, got {kind!r}")
        changes["kind"] = kind
    for key in ("url", "address"):
        if key in data:
            changes[key] = _string(f"chain.{key}", data[key])
    if "min_confirmations" in data:
        changes["min_confirmations"] = _number(
            "chain.min_confirmations", data["min_confirmations"], minimum=0, integer=True
        )
    if "poll_interval" in data:
        changes["poll_interval"] = _number(
            "chain.poll_interval", data["poll_interval"], minimum=0.1
        )
    if "amount" in data:
        changes["amount"] = _number("chain.amount", data["amount"], minimum=0)
    for key, minimum in (("timeout", 0.1), ("publish_wait", 0)):
        if key in data:
            changes[key] = _number(f"chain.{key}", data[key], minimum=minimum)
    for key, minimum in (("rescan_depth", 1), ("start_height", 0)):
        if key in data:
            changes[key] = _number(f"chain.{key}", data[key], minimum=minimum, integer=True)
    if "fetch_allowed_networks" in data:
        changes["fetch_allowed_networks"] = _networks(
            "chain.fetch_allowed_networks", data["fetch_allowed_networks"]
        )
    chain = evolve(base, **changes)
    if chain.start_height > 2**31:
        raise ConfigError("chain.start_height", "out of range")
    if chain.rescan_depth > 10_000:
        raise ConfigError("chain.rescan_depth", "at most 10000")
    if chain.kind != "none" and not chain.url:
        raise ConfigError("chain.url", f"required for chain kind {chain.kind!r}")
    if chain.url and not chain.url.startswith(("http://", "https://")):
        raise ConfigError("chain.url", "expected http://[user:password@]host:port or https://…")
    return chain


def _networks(key: str, value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(cidr, str) for cidr in value):
        raise ConfigError(key, 'expected a list of networks, such as ["127.0.0.0/8"]')
    try:
        return networks(value)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def local_endpoint(key: str, description: str) -> str:
    """
    A server endpoint string that only this machine can reach: C{unix:PATH},
    or C{tcp:}/C{tcp6:}/C{ssl:} bound to a loopback C{interface}. Empty is
    allowed (no such listener).
    """
    if not description:
        return description
    # Endpoint strings escape ':' with a backslash (an IPv6 interface, for one).
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", description)]
    kind = fields[0]
    if kind == "unix":
        return description
    interface = next(
        (f.removeprefix("interface=") for f in fields[1:] if f.startswith("interface=")), None
    )
    if kind in ("tcp", "tcp6", "ssl") and interface is not None:
        try:
            if interface == "localhost" or ipaddress.ip_address(interface).is_loopback:
                return description
        except ValueError:
            pass
    raise ConfigError(key, "must be local only: unix:PATH or tcp:PORT:interface=127.0.0.1 (or ::1)")


def _check_whole(config: Config) -> None:
    if config.private_listen and config.private_listen == config.listen:
        raise ConfigError("node.private_listen", "must differ from node.listen")
    if config.max_file_size > config.capacity:
        raise ConfigError("storage.max_file_size", "must not exceed storage.capacity")
    hosts = config.effective_hosts
    if config.copies > len(hosts):
        raise ConfigError(
            "replication.copies",
            f"{config.copies} copies need at least as many hosts, have {len(hosts)}",
        )


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
