#!/usr/bin/env bash
# Builds a release of the current tree under VERSION, signs it with zipsign
# and writes the update feed into DIR (docs/UPDATES.md, "Releasing").
#
#   packaging/release.sh --version VERSION --key ZIPSIGN_PRIVATE_KEY --out DIR
#                        [--key ANOTHER_KEY]... [--binary PREBUILT]
#
# DIR receives latchkey-VERSION-TARGET.tar.gz (the binary inside named
# `latchkey`, signed in zipsign's format with the file name as context, so
# the signature binds version and platform) and latest.json, which refers to
# it by a relative URL: DIR can be served from any static web server.
# Several --key options sign with each (a key rotation: releases carry both
# signatures until every installation trusts the new key). --binary
# packages an already built binary instead of building; its `--version`
# must say VERSION. Needs: cargo (unless --binary), zipsign, tar, gzip,
# sha256sum.
set -euo pipefail

die() { echo "release.sh: $*" >&2; exit 1; }

version="" out="" binary="" keys=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) version="${2:-}"; shift 2 ;;
    --key) keys+=("${2:-}"); shift 2 ;;
    --out) out="${2:-}"; shift 2 ;;
    --binary) binary="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ -n "$version" && -n "$out" && ${#keys[@]} -gt 0 ]] \
  || die "usage: release.sh --version VERSION --key ZIPSIGN_PRIVATE_KEY --out DIR [--binary FILE]"
# Semantic version, no build metadata (the updater refuses it: `+…` does not order).
[[ "$version" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] \
  || die "--version must be a semantic version such as 1.4.0 or 1.5.0-rc.1, not '$version'"
for k in "${keys[@]}"; do [[ -r "$k" ]] || die "cannot read the private key $k"; done
command -v zipsign >/dev/null || die "zipsign is not installed (scripts/install-deps.sh installs it)"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$binary" ]]; then
  # The current tree, calling itself VERSION (core/build.rs reads it).
  (cd "$root" && LATCHKEY_VERSION="$version" cargo build --release --locked -p latchkey) >&2
  binary="$root/target/release/latchkey"
  target="$(rustc -vV | sed -n 's/^host: //p')"
else
  [[ -x "$binary" ]] || die "--binary $binary is not an executable file"
  target="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
  [[ -n "$target" ]] || target="$(uname -m)-unknown-linux-gnu"
fi
said="$("$binary" --version)"
[[ "$said" == "latchkey $version" ]] || die "the binary says '$said', not 'latchkey $version'"

mkdir -p "$out"
name="latchkey-$version-$target.tar.gz"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/latchkey"
# Reproducible archive: fixed owner, order and times.
mtime="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -C "$stage" -cf - latchkey | gzip "-${RELEASE_GZIP_LEVEL:-9}n" > "$stage/$name"
zipsign sign tar --context "$name" --output "$out/$name" --force "$stage/$name" "${keys[@]}" >&2
# Verify with the standard tool, once per key, as an installation will.
for k in "${keys[@]}"; do
  zipsign gen-key --extract "$k" "$stage/verify.pub" --force >/dev/null
  zipsign verify tar --quiet --context "$name" "$out/$name" "$stage/verify.pub" \
    || die "the signature made with $k does not verify"
done

chmod 0644 "$out/$name"
size="$(stat -c %s "$out/$name")"
sha="$(sha256sum "$out/$name" | cut -d' ' -f1)"
cat > "$out/latest.json.tmp" <<EOF
{
  "version": "$version",
  "artifacts": {
    "$target": { "url": "$name", "size": $size, "sha256": "$sha" }
  }
}
EOF
mv "$out/latest.json.tmp" "$out/latest.json"
echo "$out/latest.json"
