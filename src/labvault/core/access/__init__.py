"""Who is acting (principals) and the hooks every decryption passes through."""
