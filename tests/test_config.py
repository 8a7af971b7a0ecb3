"""Configuration: defaults, the TOML file, command-line overrides, one-line errors."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from metadisk.config import ConfigError, Invalid, config_from_dict, load_config, networks, size
from metadisk.crypto import DEFAULT_CONVERGENCE_SECRET

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class DefaultsTests(SynchronousTestCase):
    def test_embedded_defaults(self) -> None:
        config = load_config(None)
        self.assertEqual(config.node.listen, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.node.data_dir, Path("metadisk-data"))
        self.assertTrue(config.accounts.enabled)
        self.assertEqual(config.chain.kind, "none")
        self.assertEqual(config.chain.fetch_allowed_networks, ())  # public addresses only
        self.assertEqual(config.replication.copies, 3)
        self.assertEqual(config.crypto.convergence_secret, DEFAULT_CONVERGENCE_SECRET)
        self.assertTrue(config.effective_database_url.startswith("sqlite:///"))
        self.assertTrue(config.effective_database_url.endswith("metadisk-data/metadisk.sqlite"))
        hosts = config.effective_hosts
        self.assertEqual([h.name for h in hosts], ["local1", "local2", "local3"])
        self.assertEqual({h.kind for h in hosts}, {"local"})

    def test_the_open_network_keys(self) -> None:
        node = load_config(None).node
        self.assertEqual(
            (node.header_timeout, node.max_connections_per_address, node.trusted_proxies),
            (30.0, 64, ()),
        )
        node = config_from_dict(
            {
                "node": {
                    "header_timeout": 2.5,
                    "max_connections_per_address": 8,
                    "trusted_proxies": ["10.0.0.0/8", "::1/128"],
                }
            }
        ).node
        self.assertEqual(
            (node.header_timeout, node.max_connections_per_address, node.trusted_proxies),
            (2.5, 8, networks(["10.0.0.0/8", "::1/128"])),
        )


class FileTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = Path(self.mktemp())
        path.write_text(text)
        return str(path)

    def test_full_file(self) -> None:
        path = self.write(
            """
[node]
listen = "tcp:9000"
data_dir = "/srv/md"
secret_key = "0123456789abcdef0123"
cors_origins = ["https://metadisk.example"]
[database]
url = "postgresql://metadisk@db/metadisk"
[storage]
capacity = "1 TiB"
max_file_size = "500 MB"
[bandwidth]
rate_outgoing = "4 MiB"
monthly_incoming = 1000000
[accounts]
enabled = false
[crypto]
convergence_secret = "private network"
[replication]
copies = 2
[[hosts]]
name = "a"
kind = "local"
path = "/srv/a"
[[hosts]]
name = "b"
kind = "rclone"
remote = ":webdav,url='http://127.0.0.1:8081':blobs"
[chain]
kind = "litecoin"
url = "http://u:p@127.0.0.1:19332"
fetch_allowed_networks = ["10.20.0.0/16", "fd00::/8"]
"""
        )
        config = load_config(path)
        self.assertEqual(config.node.listen, "tcp:9000")
        self.assertEqual(config.node.data_dir, Path("/srv/md"))
        self.assertEqual(config.node.cors_origins, ("https://metadisk.example",))
        self.assertEqual(config.effective_database_url, "postgresql://metadisk@db/metadisk")
        self.assertEqual(config.storage.capacity, 2**40)
        self.assertEqual(config.storage.max_file_size, 500 * 10**6)
        self.assertEqual(config.bandwidth.rate_outgoing, 4 * 2**20)
        self.assertEqual(config.bandwidth.monthly_incoming, 10**6)
        self.assertFalse(config.accounts.enabled)
        self.assertEqual(config.crypto.convergence_secret, b"private network")
        self.assertEqual(
            [(h.name, h.kind) for h in config.hosts], [("a", "local"), ("b", "rclone")]
        )
        self.assertEqual(config.chain.kind, "litecoin")
        self.assertEqual(
            config.chain.fetch_allowed_networks,
            (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8")),
        )

    def test_command_line_overrides_file(self) -> None:
        path = self.write('[node]\nlisten = "tcp:9000"\ndata_dir = "/a"\n')
        config = load_config(path, listen="tcp:9001", data_dir="/b")
        self.assertEqual((config.node.listen, config.node.data_dir), ("tcp:9001", Path("/b")))


class ErrorTests(SynchronousTestCase):
    def assertKey(self, data: dict, key: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config_from_dict(data)
        self.assertEqual(caught.exception.key, key)
        self.assertNotIn("\n", str(caught.exception))
        self.assertIn(key, str(caught.exception))

    def test_bad_values_name_their_key(self) -> None:
        self.assertKey({"storage": {"capacity": "lots"}}, "storage.capacity")
        self.assertKey({"storage": {"capacity": -1}}, "storage.capacity")
        self.assertKey({"storage": {"capacity": 0}}, "storage.capacity")
        self.assertKey({"storage": {"max_file_size": "3 parsecs"}}, "storage.max_file_size")
        self.assertKey({"storage": {"capacity": 10, "max_file_size": 20}}, "storage.max_file_size")
        self.assertKey({"bandwidth": {"rate_incoming": True}}, "bandwidth.rate_incoming")
        self.assertKey({"bandwidth": {"rate_incoming": 2**60}}, "bandwidth.rate_incoming")
        self.assertKey({"bandwidth": {"speed": 1}}, "bandwidth.speed")
        self.assertKey({"nonsense": {}}, "nonsense")
        self.assertKey({"node": {"secret_key": "short"}}, "node.secret_key")
        self.assertKey({"node": {"cors_origins": "x"}}, "node.cors_origins")
        self.assertKey({"database": {"url": "mysql://x"}}, "database.url")
        self.assertKey({"accounts": {"enabled": "yes"}}, "accounts.enabled")
        self.assertKey({"replication": {"copies": 0}}, "replication.copies")
        self.assertKey({"replication": {"copies": 4}}, "replication.copies")
        self.assertKey({"hosts": [{"name": "a", "kind": "ftp"}]}, "hosts[0].kind")
        self.assertKey({"hosts": [{"name": "a", "kind": "local"}]}, "hosts[0].path")
        self.assertKey(
            {"hosts": [{"name": "../a", "kind": "local", "path": "/x"}]}, "hosts[0].name"
        )
        self.assertKey(
            {"hosts": [{"name": "a", "kind": "local", "path": "/x", "remote": "y"}]},
            "hosts[0].remote",
        )
        self.assertKey(
            {"hosts": [{"name": "a", "kind": "rclone", "remote": "r:", "public_url": "http://x"}]},
            "hosts[0].public_url",
        )
        self.assertKey(
            {"hosts": [{"name": "a", "kind": "local", "path": "/x", "public_url": "/srv"}]},
            "hosts[0].public_url",
        )
        twice = {"name": "a", "kind": "local", "path": "/x"}
        self.assertKey({"hosts": [twice, twice, twice]}, "hosts")
        self.assertKey({"chain": {"kind": "dogecoin"}}, "chain.kind")
        self.assertKey({"chain": {"kind": "litecoin"}}, "chain.url")
        self.assertKey({"crypto": {"convergence_secret": ""}}, "crypto.convergence_secret")
        for bad in ("10.0.0.0/8", ["10.0.0.0/33"], ["10.0.0.1/8"], ["localhost"], [8]):
            self.assertKey(
                {"chain": {"fetch_allowed_networks": bad}}, "chain.fetch_allowed_networks"
            )
        self.assertKey({"node": {"header_timeout": 0}}, "node.header_timeout")
        self.assertKey({"node": {"header_timeout": "30s"}}, "node.header_timeout")
        self.assertKey(
            {"node": {"max_connections_per_address": 0}}, "node.max_connections_per_address"
        )
        self.assertKey({"node": {"trusted_proxies": "127.0.0.1"}}, "node.trusted_proxies")
        self.assertKey({"node": {"trusted_proxies": ["127.0.0.300/32"]}}, "node.trusted_proxies")
        self.assertKey({"uploads": {"resumable_expiry": 10}}, "uploads.resumable_expiry")
        self.assertKey({"uploads": {"resumable_per_token": 0}}, "uploads.resumable_per_token")
        self.assertKey({"uploads": {"resumable_per_token": "8"}}, "uploads.resumable_per_token")

    def test_resumable_uploads(self) -> None:
        uploads = load_config(None).uploads
        self.assertEqual((uploads.resumable_expiry, uploads.resumable_per_token), (86400, 8))
        changed = config_from_dict(
            {"uploads": {"resumable_expiry": 600, "resumable_per_token": 2}}
        ).uploads
        self.assertEqual((changed.resumable_expiry, changed.resumable_per_token), (600, 2))

    def test_unreadable_file(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/metadisk.toml")
        self.assertEqual(caught.exception.key, "--config")
        path = Path(self.mktemp())
        path.write_text("[node\n")
        with self.assertRaises(ConfigError):
            load_config(str(path))

    def test_sizes(self) -> None:
        self.assertEqual(size("1.5 KiB"), 1536)
        self.assertEqual(size("10GB"), 10**10)
        self.assertEqual(size(0), 0)
        self.assertRaises(Invalid, size, 1.5)
        self.assertRaises(Invalid, size, "-1")
        self.assertRaises(Invalid, size, 2**53 + 1)


class TwistdTests(SynchronousTestCase):
    """The operator's view: a bad config stops the node with one line naming the key."""

    def twistd(self, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*TWISTD, "-n", *options, "metadisk", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_bad_config_one_line(self) -> None:
        path = Path(self.mktemp()).resolve()
        path.write_text('[storage]\ncapacity = "lots"\n')
        result = self.twistd("--config", str(path))
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            result.stderr.strip(),
            "metadisk: config error: storage.capacity: expected a size in bytes, got 'lots'",
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_bad_allowed_network(self) -> None:
        path = Path(self.mktemp()).resolve()
        path.write_text('[chain]\nfetch_allowed_networks = ["127.0.0.0/40"]\n')
        result = self.twistd("--config", str(path))
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            result.stderr.strip(),
            "metadisk: config error: chain.fetch_allowed_networks: "
            "'127.0.0.0/40' does not appear to be an IPv4 or IPv6 network",
        )

    def test_console_script_without_plugin_discovery(self) -> None:
        """
        An editable install hides twisted/plugins from twistd ("Unknown command:
        metadisk"); the console script metadisk-node runs the node all the same.
        """
        elsewhere = Path(self.mktemp()).resolve()
        elsewhere.mkdir(parents=True)
        shutil.copytree(ROOT / "metadisk", elsewhere / "metadisk")  # no twisted/plugins beside
        env = {**os.environ, "PYTHONPATH": str(elsewhere)}
        twistd = subprocess.run(
            [*TWISTD, "metadisk"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertIn("Unknown command: metadisk", twistd.stdout + twistd.stderr)
        script = "import sys; from metadisk.tap import main; main(sys.argv[1:])"
        node = subprocess.run(
            [sys.executable, "-c", script, "--listen", "nope:1"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(node.returncode, 0)
        self.assertEqual(
            node.stderr.strip(),
            "metadisk: config error: node.listen: Unknown endpoint type: 'nope'",
        )

    def test_bad_listen(self) -> None:
        result = self.twistd("--listen", "nope:1")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            result.stderr.strip(),
            "metadisk: config error: node.listen: Unknown endpoint type: 'nope'",
        )

    def test_start_failure_exits_nonzero(self) -> None:
        """
        A node that cannot start after its config was accepted (here: its port
        is taken) says why in one line and exits with status 1, its pid file
        removed, so that a supervisor sees the failure.
        """
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        pidfile = base / "twistd.pid"
        result = self.twistd(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            str(base / "data"),
            options=("--pidfile", str(pidfile)),
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        # twistd sends standard error to its log: the one line is the log's.
        said = [line for line in result.stdout.splitlines() if "could not start" in line]
        self.assertEqual(len(said), 1, result.stdout)
        self.assertTrue(
            said[0].endswith(
                "[metadisk.tap.NodeService#critical] the node could not start: Couldn't listen"
                f" on 127.0.0.1:{port}: [Errno 98] Address already in use."
            ),
            said[0],
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertFalse(pidfile.exists())

    def test_failure_before_the_reactor_runs_exits_too(self) -> None:
        """A data directory that cannot be made fails the start at once: status 1, no hang."""
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        (base / "file").write_text("a file, not a folder")
        result = self.twistd(
            "--data-dir", str(base / "file" / "data"), options=("--pidfile", str(base / "pid"))
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        said = [line for line in result.stdout.splitlines() if "could not start" in line]
        self.assertEqual(len(said), 1, result.stdout)
        self.assertIn("Not a directory", said[0])
