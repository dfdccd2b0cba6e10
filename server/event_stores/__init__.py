"""Event store back-ends; ``server.events.open_store`` picks one by URL."""
