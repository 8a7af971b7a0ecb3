"""Where blobs live: the local cache, the file hosts, and the queue between them."""
