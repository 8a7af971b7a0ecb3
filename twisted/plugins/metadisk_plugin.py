"""twistd finds the node here (`twistd metadisk`); the console script metadisk-node does not."""

from metadisk.service import SERVICE

metadisk = SERVICE
