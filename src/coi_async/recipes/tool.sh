#!/bin/bash
# The step of one AI tool in the `coi` image, run as root by `coi build` on the image so far:
# COI_TOOL_PACKAGE from the npm registry, whose executable COI_TOOL_BINARY must then answer
# --version. With COI_NODE_MAJOR (a tool that needs a newer Node.js than Debian 12's), Node.js of
# that major release first, also from the npm registry: the official binaries, packaged as
# node-linux-<arch>. It comes first on PATH (/usr/local/bin), so npm and every tool run on it.
# The packages' postinstalls copy native binaries from platform packages that npm fetches from
# the registry too (optionalDependencies); nothing is downloaded from elsewhere.
set -euo pipefail
step() { printf '\n==> %s\n' "$*"; }
: "${COI_TOOL_PACKAGE:?}" "${COI_TOOL_BINARY:?}"

node_major() { node -p 'process.versions.node.split(".")[0]'; }
if [[ -n ${COI_NODE_MAJOR:-} ]] && (($(node_major) < COI_NODE_MAJOR)); then
    step "Node.js $COI_NODE_MAJOR from the npm registry"
    case $(dpkg --print-architecture) in
        amd64) node_arch=x64 ;;
        arm64) node_arch=arm64 ;;
        *) printf 'no Node.js package on the npm registry for %s\n' "$(dpkg --print-architecture)"; exit 1 ;;
    esac
    npm install --global --no-audit --no-fund --loglevel=warn "node-linux-$node_arch@$COI_NODE_MAJOR"
    hash -r
fi

step "$COI_TOOL_PACKAGE from the npm registry"
npm install --global --no-audit --no-fund --loglevel=warn "$COI_TOOL_PACKAGE@latest"
# npm 9 (Debian 12's) ignores the platform packages' libc field and installs the musl builds
# too: 250 MB that a glibc system never runs.
rm -rf /usr/local/lib/node_modules/"$COI_TOOL_PACKAGE"/node_modules/@anthropic-ai/claude-code-linux-*-musl

version=$("$COI_TOOL_BINARY" --version) || {
    printf '%s --version failed (node %s)\n' "$COI_TOOL_BINARY" "$(node --version)"
    exit 1
}
printf '%s %s (node %s)\n' "$COI_TOOL_BINARY" "$version" "$(node --version)"

npm cache clean --force 2>/dev/null || true
rm -rf /root/.npm /root/.cache
