/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every event line this module prints: the vmtest event protocol, version 1
 * (drivers/PROTOCOL.md). All the formats are here, one literal each, so that vmtest's unit tests
 * can render them and feed them to its parser (tests/unit/test_linux_module_formats.py): keep every
 * "VMTEST1 " format in this file and each on one line.
 *
 * seq comes first and is filled in by vm_event(); for acquired and release the caller holds the
 * mutex while calling it. Values never contain spaces; only msg= (always last) may.
 */
#ifndef VM_EVENTS_H
#define VM_EVENTS_H

#include <linux/atomic.h>
#include <linux/printk.h>

#define VM_DRIVER_NAME "vmtest_mutex_tests"
#define VM_DRIVER_VERSION "0.1.0"

/* clang-format off */
#define VM_EV_RUN_START      "VMTEST1 seq=%llu ev=run-start driver=%s proto=1 os=linux build=%s\n"
#define VM_EV_SCENARIO_START "VMTEST1 seq=%llu ev=scenario-start sc=%s params=%s\n"
#define VM_EV_MUTEX          "VMTEST1 seq=%llu ev=mutex sc=%s m=%s k=%s\n"
#define VM_EV_ACQUIRE        "VMTEST1 seq=%llu ev=acquire sc=%s t=%d m=%s k=%s irql=%d\n"
#define VM_EV_ACQUIRED       "VMTEST1 seq=%llu ev=acquired sc=%s t=%d m=%s k=%s irql=%d depth=%u\n"
#define VM_EV_RELEASE        "VMTEST1 seq=%llu ev=release sc=%s t=%d m=%s k=%s irql=%d depth=%u\n"
#define VM_EV_CALL           "VMTEST1 seq=%llu ev=call sc=%s t=%d op=%s irql=%d r=%s ctx=%s\n"
#define VM_EV_CALL_MUTEX     "VMTEST1 seq=%llu ev=call sc=%s t=%d op=%s m=%s k=%s irql=%d r=%s ctx=%s\n"
#define VM_EV_COUNTER        "VMTEST1 seq=%llu ev=counter sc=%s m=%s value=%llu expected=%llu\n"
#define VM_EV_THREAD_END     "VMTEST1 seq=%llu ev=thread-end sc=%s t=%d iterations=%d\n"
#define VM_EV_SCENARIO_END   "VMTEST1 seq=%llu ev=scenario-end sc=%s outcome=%s\n"
#define VM_EV_SCENARIO_MSG   "VMTEST1 seq=%llu ev=scenario-end sc=%s outcome=%s msg=%.300s\n"
#define VM_EV_RUN_END        "VMTEST1 seq=%llu ev=run-end scenarios=%d\n"
/* clang-format on */

/* The run's sequence counter: 1 for run-start, +1 for every event line. */
extern atomic64_t vm_seq;

#define vm_event(fmt, ...) \
	pr_info(fmt, (unsigned long long)atomic64_inc_return(&vm_seq), ##__VA_ARGS__)

#endif /* VM_EVENTS_H */
