"""
Loaded into the schemathesis run (C{SCHEMATHESIS_HOOKS}): a tus body
(C{application/offset+octet-stream}) is bytes, sent as
C{application/octet-stream} is.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
