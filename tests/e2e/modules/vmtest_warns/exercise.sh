#!/bin/sh
# The smoke test's exerciser: says in the kernel log that it ran, where, and that the module was live.
echo "vmtest_exerciser: $1 $(cat /sys/module/vmtest_warns/initstate) in $(pwd)" > /dev/kmsg
