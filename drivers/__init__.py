"""Built-in drivers; written only against cnm's public driver API, like any third-party driver."""

import logging

# As cnm's own logger: a library does not print through logging's last-resort handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())
