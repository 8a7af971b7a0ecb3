"""
What twistd runs: C{twistd metadisk} (found through twisted/plugins/metadisk_plugin.py)
and the console script C{metadisk-node} (L{metadisk.tap.main}). The node's modules
are imported only when it runs.
"""

from twisted.application.service import ServiceMaker

SERVICE = ServiceMaker(
    "MetaDisk node",
    "metadisk.tap",
    "A MetaDisk node: convergent-encrypted file hosting, compatible with Storj web-core.",
    "metadisk",
)
