#!/bin/sh
# System-wide setup for the tests, run by CI as root before `npm ci` and the tests.
# Each section is idempotent and quiet; CI reaches only the npm registry and Debian's mirrors.
set -eu

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system.sh: not root; nothing installed (the tests that need root will skip)" >&2
  exit 0
fi

apt_updated=0
apt_install() {
  # Installs the Debian packages given whose command is missing: "pkg:command ...".
  missing=""
  for pair in "$@"; do
    pkg=${pair%%:*}
    cmd=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if [ "$apt_updated" -eq 0 ]; then
    apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; return 1; }
    apt_updated=1
  fi
  # Keep package scripts from starting services (a system sshd on port 22) while installing.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  status=0
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >"$log" 2>&1 || status=$?
  [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
  # Output only when it failed: the CI log stays short.
  [ "$status" -eq 0 ] || cat "$log" >&2
  rm -f "$log"
  return "$status"
}

# --- netns and ssh tests (test/netns.test.ts, test/ssh.test.ts) -------------
# iproute2 gives `ip netns` and veth pairs; openssh-server gives a real sshd that
# the ssh test starts itself on a loopback port with its own throwaway config and
# keys (the system sshd service is neither configured nor started here).
apt_install iproute2:ip openssh-server:sshd openssh-client:ssh openssh-client:ssh-keygen procps:pgrep
# The Debian package's privilege-separation directory; sshd refuses to start without it.
mkdir -p /run/sshd
chmod 0755 /run/sshd
# --- end netns and ssh tests --------------------------------------------------
