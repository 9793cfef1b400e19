#!/usr/bin/env bash
# Container health check: GET /healthz on the node's HTTP port, healthy on a 200.
# Uses bash's /dev/tcp so the image needs no curl. SQUALL_HEALTHCHECK_URL overrides the
# address (http://HOST:PORT/PATH, plain HTTP only).
set -euo pipefail
url="${SQUALL_HEALTHCHECK_URL:-http://127.0.0.1:7300/healthz}"
rest="${url#http://}"
hostport="${rest%%/*}"
path="/${rest#*/}"
[[ "$rest" == */* ]] || path="/"
host="${hostport%:*}"
port="${hostport##*:}"
[[ "$hostport" == *:* ]] || port=80
exec 3<>"/dev/tcp/${host}/${port}"
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
IFS= read -r -t 2 status <&3
exec 3<&-
case "$status" in
  "HTTP/1."[01]" 200 "*) exit 0 ;;
  *) echo "unhealthy: ${status:-no answer} from $url" >&2; exit 1 ;;
esac
