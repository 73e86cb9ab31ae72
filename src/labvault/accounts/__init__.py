"""Patient and staff accounts: passwords, a mandatory second factor, server-side sessions."""
