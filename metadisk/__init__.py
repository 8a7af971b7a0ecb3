"""MetaDisk node: convergent-encrypted file hosting on Twisted."""

__version__ = "0.3.0"
