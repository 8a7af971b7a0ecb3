"""MetaDisk node: convergent-encrypted file hosting on Twisted."""

from twisted.application.service import ServiceMaker

__version__ = "0.3.0"

# What twistd runs as `twistd metadisk` (twisted/plugins/metadisk_plugin.py) and as the
# console script `metadisk-node` (metadisk.tap.main); the module is imported only when used.
SERVICE = ServiceMaker(
    "MetaDisk node",
    "metadisk.tap",
    "A MetaDisk node: convergent-encrypted file hosting, compatible with Storj web-core.",
    "metadisk",
)
