"""Built-in drivers; written only against cnm's public driver API, like any third-party driver."""
