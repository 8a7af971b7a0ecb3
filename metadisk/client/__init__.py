"""
The MetaDisk command-line client, installed as the C{metadisk} command
(C{python -m metadisk.client} from a checkout). It is a blocking client
(http.client) that streams: no file is ever held in memory. It talks to a
node over HTTP only and imports nothing of the node's own modules (only
L{metadisk.crypto}, to verify downloads).

One module a job:

    command.py   the arguments, run() (one command, its exit code) and main()
    node.py      NodeClient: HTTP to one node; the FILEHASH argument check
    errors.py    exit codes, CLIError, and the node's JSON errors as one line
    output.py    results as text or JSON, notes, progress bars; human() sizes
    upload.py    metadisk upload: a streamed multipart body, stopped on an early refusal
    resumable.py metadisk upload of a large file: tus, resumed after a cut or a new run
    download.py  metadisk download: HEAD, ranged GETs that resume, verification
    lookup.py    metadisk find, metadisk status
    accounts.py  metadisk token new | balance | redeem | prices
"""
