#!/bin/sh
# The scenario's vault password (ANSIBLE_VAULT_PASSWORD_FILE runs this): made at random on first
# use and kept beside the vault it opens (both ignored by git), never written in the repository.
set -eu
file="$(dirname "$0")/.vault-password"
if [ ! -s "$file" ]; then
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file")
fi
cat "$file"
