"""Real stand-ins for third parties the tests cannot run: push services, DNS, IMAP faults."""
