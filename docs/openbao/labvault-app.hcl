# The labvault application's own policy: wrap, unwrap and rewrap patient data keys under the
# Transit key "labvault", derive its audit keys through the HMAC key "labvault-derivation",
# read key metadata (versions, never material). Nothing else: no export, no backup, no
# rotation, no configuration, no deletion. Replace "transit" and the key names if yours differ.

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

path "transit/keys/labvault" {
  capabilities = ["read"]
}

path "transit/keys/labvault-derivation" {
  capabilities = ["read"]
}
