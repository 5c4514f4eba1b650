#!/usr/bin/env bash
# The end-to-end suite again, with every `latchkey` it starts on the
# PostgreSQL backend (docs/SCALE.md): tests/src/postgres.rs starts one
# throwaway server on loopback for the run (a database per test) and stops
# it. Skipped here, each for the reason given — they stay in the redb run:
set -euo pipefail
cd "$(dirname "$0")/.."
skip=(
  # About the redb file itself: damaged or truncated files, newer schemas
  # refused byte-for-byte unchanged, ciphertext swapped inside the file,
  # the released redb fixtures, the file's mode, the data-directory lock
  # read from the file, the signing key read back from the file.
  integrity:: fixtures:: vault_cli::key_file_is_created_private
  vault_cli::second_process_is_told_who_holds_the_data_dir
  serve::first_start_with_no_configuration_serves_https
  agent::signing_key_is_stable_across_restarts
  # On PostgreSQL already in the main run (their harness gives every
  # replica the one shared database; backup_postgres makes its own).
  replicas:: replicas_limits:: backup_postgres::
  # Runs the CLI under `env -i` (a keyutils session), which drops the
  # store settings this run passes in the environment.
  key_sources::keyring_source_with_kernel_keyutils
  # Backend-neutral and slow: the browser, the desktop app and the .deb
  # gain nothing from a second run.
  ui:: desktop deb::
)
args=()
for s in "${skip[@]}"; do args+=(--skip "$s"); done
LATCHKEY_TEST_STORE=postgres cargo test -p latchkey-e2e --test it --locked -- "${args[@]}"
