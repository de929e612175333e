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

# --- dashboard browser test (test/view-browser.test.ts) -------------------------
# Debian's chromium, driven headless by playwright-core (a dev dependency that
# downloads no browser of its own).
apt_install chromium:chromium
# --- end dashboard browser test -------------------------------------------------

# --- Slurm test (test/slurm.test.ts) ------------------------------------------
# A one-node cluster the test configures and starts itself (munged, slurmctld,
# slurmd under its own temporary folder); the packages' services stay stopped.
apt_install slurm-wlm:slurmctld slurm-wlm:slurmd slurm-client:sbatch munge:munged
# --- end Slurm test -------------------------------------------------------------

# --- webgpu tests (test/webgpu-*.test.ts, the webgpu CLI runs) ----------------
# A software Vulkan driver for Dawn: bookworm's Mesa 22 lavapipe lacks what Dawn
# requires (shaderUniform*ArrayDynamicIndexing); 25.0.x from bookworm-backports
# works. The backports suite is added from the mirror already configured.
mesa_version=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
case "$mesa_version" in
  2[5-9].*|[3-9][0-9].*) ;;
  *)
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      mirror=$(grep -rhs '^URIs:.*debian/*$' /etc/apt/sources.list.d/ | head -n1 | awk '{print $2}')
      [ -n "$mirror" ] || mirror=$(grep -hs '^deb .*debian' /etc/apt/sources.list | grep -v security | head -n1 | awk '{print $2}')
      [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
        >/etc/apt/sources.list.d/ringattn-backports.sources
    fi
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      exit 1
    fi
    rm -f "$log"
    ;;
esac
# --- end webgpu tests -----------------------------------------------------------
