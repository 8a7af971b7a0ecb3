"""The HTTP face of the node: the web-core API on Klein, over a streaming twisted.web site."""
