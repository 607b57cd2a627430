"""The running agent: run loop, publisher, command handlers, service plumbing."""
