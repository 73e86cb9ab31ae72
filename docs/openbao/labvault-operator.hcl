# The key officer's policy, for `labvault keys rotate` and `labvault keys retire [--destroy]`
# run by a person (never by the application): create and rotate the wrapping key, raise its
# minimum decryption version, trim (delete for good) the versions below it. Still no export
# and no deletion of keys.

path "transit/keys/labvault" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/labvault/rotate" {
  capabilities = ["update"]
}

path "transit/keys/labvault/config" {
  capabilities = ["update"]
}

path "transit/keys/labvault/trim" {
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
