from twisted.application.service import ServiceMaker

metadisk = ServiceMaker(
    "MetaDisk node",
    "metadisk.tap",
    "A MetaDisk node: convergent-encrypted file hosting, compatible with Storj web-core.",
    "metadisk",
)
