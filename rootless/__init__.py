"""rootless: containers for ordinary users."""
