"""C{python -m metadisk.client}: the C{metadisk} command from a checkout."""

from metadisk.client.command import main

main()
