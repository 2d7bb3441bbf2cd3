"""Answer parsing and benchmark metrics (Charades-STA; more in issue #7)."""
