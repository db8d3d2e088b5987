# shellcheck shell=bash
# Sourced, not run, by scripts/setup.sh and scripts/setup_citus.sh (each defines `log`):
#
#   apt_install_missing PACKAGE...   installs those of the Debian packages that are not
#                                    installed yet, in one apt-get call (through sudo unless
#                                    root), or logs that all are present
apt_install_missing() {
  local pkg sudo=
  local missing=()
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt packages present"
    return 0
  fi
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
