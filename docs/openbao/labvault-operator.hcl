# The key officer's policy, for `labvault keys rotate` and `labvault keys retire` run by a
# person (never by the application): create and rotate the wrapping key, raise its minimum
# decryption version. Still no export and no deletion of keys.

path "transit/keys/labvault" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/labvault/rotate" {
  capabilities = ["update"]
}

path "transit/keys/labvault/config" {
  capabilities = ["update"]
}

path "transit/keys/labvault-derivation" {
  capabilities = ["create", "read", "update"]
}

path "transit/encrypt/labvault" {
  capabilities = ["update"]
}

path "transit/decrypt/labvault" {
  capabilities = ["update"]
}

path "transit/rewrap/labvault" {
  capabilities = ["update"]
}

path "transit/hmac/labvault-derivation" {
  capabilities = ["update"]
}

path "transit/hmac/labvault-derivation/*" {
  capabilities = ["update"]
}
