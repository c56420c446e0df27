#!/usr/bin/env bash
# Installs what the real-runtime test tier (tests/runtime/) needs on a fresh Debian machine, as root:
#   apt: podman, runc (crun refuses hybrid cgroups), catatonit, uidmap, fuse-overlayfs, debootstrap, iptables
#        (the tier enforces the rendered egress NetworkPolicies in each pod's network namespace)
#   /etc/containers/containers.conf: no default rlimits (this machine kind may not raise them)
#   local stand-in base images, made with debootstrap because no container registry can be reached here:
#     localhost/local-stand-in/debian:bookworm-minbase   for debian:12.8-slim
#     localhost/local-stand-in/node:bookworm-debian      for node:22.12.0-bookworm-slim (Debian's Node 18 + npm)
#     localhost/local-stand-in/redis:bookworm-debian     for the in-cluster Redis image (Debian's redis-server)
#   the CLI image, images/cli/Dockerfile built on the stand-ins: localhost/copilot-fleet/copilot-cli:local (or the
#   tag in $COPILOT_FLEET_RUNTIME_CLI_IMAGE: checkouts that run the tier side by side each build their own)
# The stand-ins trust this machine's CA bundle (HTTPS to the package registries goes through it); images built
# from the real public bases, as users build them, do not change. Safe to run again: each step is skipped when
# its image exists (the CLI image build is incremental through podman's layer cache). Prints each step's time.
#
#   bash scripts/setup-runtime.sh               everything above
#   bash scripts/setup-runtime.sh --cli-image   only (re)build the CLI image from the current sources (the runtime
#                                               tests do this first, so they always run the code under test)
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY_CLI_IMAGE=false
case "${1:-}" in
  "") ;;
  --cli-image) ONLY_CLI_IMAGE=true ;;
  *) echo "usage: $0 [--cli-image]" >&2; exit 2 ;;
esac

STAND_IN=localhost/local-stand-in
DEBIAN_IMAGE=$STAND_IN/debian:bookworm-minbase
NODE_IMAGE=$STAND_IN/node:bookworm-debian
REDIS_IMAGE=$STAND_IN/redis:bookworm-debian
CLI_IMAGE=${COPILOT_FLEET_RUNTIME_CLI_IMAGE:-localhost/copilot-fleet/copilot-cli:local}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# runc: crun refuses hybrid cgroups here. nofile only: podman's default nproc limit cannot be set on this kind of
# machine, and builds fail on it.
PODMAN=(podman --runtime runc)
BUILD_ULIMIT=(--ulimit nofile=20000:20000)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { printf '==> %s\n' "$*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%d' $(( ms / 1000 )) $(( ms % 1000 / 100 )); }
step_start=0
begin() { step_start=$(now_ms); say "$*"; }
done_step() { printf '    %s: %s s\n' "$1" "$(seconds_since "$step_start")"; }
total_start=$(now_ms)

image_exists() { "${PODMAN[@]}" image exists "$1"; }

if ! $ONLY_CLI_IMAGE; then
# --- packages -----------------------------------------------------------------------------------------------------
apt_needed=()
for tool in podman:podman runc:runc catatonit:catatonit newuidmap:uidmap fuse-overlayfs:fuse-overlayfs \
            debootstrap:debootstrap iptables:iptables nsenter:util-linux openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || apt_needed+=("${tool##*:}")
done
if [ ${#apt_needed[@]} -gt 0 ]; then
  begin "apt-get install ${apt_needed[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
  done_step apt
fi

# --- podman configuration ---------------------------------------------------------------------------------------
CONF=/etc/containers/containers.conf
if [ ! -f "$CONF" ]; then
  say "writing $CONF (no default rlimits)"
  $SUDO install -d /etc/containers
  printf '%s\n' '# Written by copilot-fleet scripts/setup-runtime.sh: podman'"'"'s default rlimits cannot be set on this' \
    '# machine kind (no CAP_SYS_RESOURCE), so containers start with the host'"'"'s.' \
    '[containers]' 'default_ulimits = []' | $SUDO tee "$CONF" >/dev/null
elif ! grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$CONF"; then
  echo "error: $CONF exists but does not set 'default_ulimits = []' under [containers]; add it (podman's" \
       "default rlimits cannot be set on this machine kind) and run again" >&2
  exit 1
fi

# --- base image stand-ins ---------------------------------------------------------------------------------------
apt_mirror() {
  # The Debian mirror this machine's apt uses (deb822 sources first, then the one-line format).
  local uri
  uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! image_exists "$DEBIAN_IMAGE"; then
  begin "debootstrap bookworm (minbase) -> $DEBIAN_IMAGE"
  rootfs=$(mktemp -d /var/tmp/copilot-fleet-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$(apt_mirror)" >/dev/null
  # Stand-in only: trust this machine's CA bundle (HTTPS to the registries goes through it) without touching the
  # bundle the image's own ca-certificates package manages.
  $SUDO install -D -m 0644 "$HOST_CA" "$rootfs/usr/local/share/local-stand-in/host-ca.crt"
  printf '%s\n' '# local stand-in image: trust the CA bundle of the machine that built it' '[global]' \
    'cert = /usr/local/share/local-stand-in/host-ca.crt' | $SUDO tee "$rootfs/etc/pip.conf" >/dev/null
  $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  $SUDO tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'LABEL org.opencontainers.image.description=local stand-in for debian:12.8-slim (debootstrap minbase bookworm)' \
    --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE" >/dev/null
  $SUDO rm -rf "$rootfs"
  trap - EXIT
  done_step "debian stand-in"
fi

build_stand_in() {  # image, containerfile
  if ! image_exists "$1"; then
    begin "podman build $1 ($2)"
    "${PODMAN[@]}" build -q "${BUILD_ULIMIT[@]}" --build-arg "BASE_IMAGE=$DEBIAN_IMAGE" -t "$1" \
      -f "$2" tests/runtime/images >/dev/null
    done_step "$1"
  fi
}
build_stand_in "$NODE_IMAGE" tests/runtime/images/node-stand-in.Containerfile
build_stand_in "$REDIS_IMAGE" tests/runtime/images/redis-stand-in.Containerfile
fi

for image in "$DEBIAN_IMAGE" "$NODE_IMAGE"; do
  image_exists "$image" || { echo "error: $image is missing: run bash scripts/setup-runtime.sh first" >&2; exit 1; }
done

# --- the CLI image --------------------------------------------------------------------------------------------------
begin "podman build $CLI_IMAGE (images/cli/Dockerfile on the stand-ins; cached layers are reused)"
"${PODMAN[@]}" build -q "${BUILD_ULIMIT[@]}" --build-arg "NODE_IMAGE=$NODE_IMAGE" \
  --build-arg "BASE_IMAGE=$DEBIAN_IMAGE" -t "$CLI_IMAGE" -f images/cli/Dockerfile . >/dev/null
done_step "CLI image"

printf '==> runtime tier ready in %s s: %s\n' "$(seconds_since "$total_start")" \
  "$("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep -E 'local-stand-in|copilot-fleet/' | sort | tr '\n' ' ')"
