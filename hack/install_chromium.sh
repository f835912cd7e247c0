#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the test that opens `show --html` pages in a
# headless browser. `make test` runs this when either is missing; CI runs as root on a
# clean machine with the Debian archive reachable. Without root (or password-less sudo)
# it only says what to run: the test then fails with the same instruction.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install_chromium: not root; run: sudo apt-get install -y chromium chromium-driver" >&2
  exit 0
fi
echo "install_chromium: apt-get install chromium chromium-driver (for the HTML timeline test)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
