"""
The MetaDisk command-line client, installed as the C{metadisk} command. It
talks to a node over HTTP only: it imports nothing of the node's own modules.
"""
