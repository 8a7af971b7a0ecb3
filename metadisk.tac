# Run with: twistd -ny metadisk.tac   (reads the config file named by METADISK_CONFIG, if set)
import os

from twisted.application import service

from metadisk.tap import Options, makeService

options = Options()
options.parseOptions(["--config", os.environ["METADISK_CONFIG"]] if "METADISK_CONFIG" in os.environ else [])
application = service.Application("metadisk")
makeService(options).setServiceParent(application)
