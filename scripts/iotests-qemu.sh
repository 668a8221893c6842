#!/usr/bin/env bash
# QEMU_PROG for scripts/iotests.sh: Debian's qemu-system-x86_64, which is
# built without the qtest accelerator the iotests ask for (-accel qtest);
# it runs their VMs under tcg instead. Every other argument passes unchanged.
set -euo pipefail
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -accel ] && [ "${2:-}" = qtest ]; then args+=(-accel tcg); shift 2; continue; fi
  args+=("$1"); shift
done
exec qemu-system-x86_64 "${args[@]}"
