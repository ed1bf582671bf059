"""One module per channel, each a small class behind the Notifier protocol."""
